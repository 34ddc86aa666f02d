# Sourced by scripts/demo, scripts/test, scripts/microvm-setup and .ci/run, so
# that -h and --help print the script's usage before it installs or starts anything.

# Tell whether any of the arguments is -h or --help.
wants_help() {
    local argument
    for argument in "$@"; do
        case $argument in
            -h|--help) return 0 ;;
        esac
    done
    return 1
}

# Print the comment block at the top of a script, below its #! line, without the leading "# ".
print_usage() {
    awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$1"
}
