# Shared by the benchmark scripts; sourced, not run.

# bench_exe NAME: the path of the release executable of the bench target NAME, built first if
# needed. Built workspace-wide (`-p` would re-unify features and rebuild half the tree). With
# SKIP_BUILD set, the newest one already built.
bench_exe() {
    local name=$1 target=${CARGO_TARGET_DIR:-target} exe
    if [ -z "${SKIP_BUILD:-}" ]; then
        exe=$(cargo bench --workspace --bench "$name" --no-run --message-format=json 2> /dev/null \
            | python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == sys.argv[1] and m.get("executable"):
        print(m["executable"])' "$name")
    else
        exe=$(ls -t "$target"/release/deps/"$name"-* 2> /dev/null | grep -v '\.d$' | head -1)
    fi
    if [ ! -x "$exe" ]; then
        echo "no executable for bench $name: cargo bench --workspace --bench $name --no-run" >&2
        return 1
    fi
    echo "$exe"
}
