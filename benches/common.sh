# Shared by the benchmark scripts; sourced, not run.

# bench_exe NAME [PACKAGE]: the path of the release executable of the bench target NAME (of
# PACKAGE, default the root package `patron`), built first if needed. Built workspace-wide (`-p`
# would re-unify features and rebuild half the tree). With SKIP_BUILD set, the newest one
# already built.
bench_exe() {
    local name=$1 package=${2:-patron} target=${CARGO_TARGET_DIR:-target} exe
    if [ -z "${SKIP_BUILD:-}" ]; then
        exe=$(cargo bench --workspace --bench "$name" --no-run --message-format=json 2> /dev/null \
            | python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") != "compiler-artifact" or not m.get("executable"):
        continue
    # "path+file:///dir/NAME#VERSION" or "path+file:///dir#NAME@VERSION"
    path, _, tail = m["package_id"].partition("#")
    package = tail.split("@")[0] if "@" in tail else path.rstrip("/").rsplit("/", 1)[-1]
    if m["target"]["name"] == sys.argv[1] and package == sys.argv[2]:
        print(m["executable"])' "$name" "$package")
    else
        exe=$(ls -t "$target"/release/deps/"$name"-* 2> /dev/null | grep -v '\.d$' | head -1)
    fi
    if [ ! -x "$exe" ]; then
        echo "no executable for bench $name: cargo bench --workspace --bench $name --no-run" >&2
        return 1
    fi
    echo "$exe"
}

# api_config FILE PORT ROLE: sets KEY to a fresh API key and writes FILE, a `serve` config that
# listens on 127.0.0.1:PORT and holds the key's SHA-256 with ROLE. Append further sections.
api_config() {
    local file=$1 port=$2 role=$3
    KEY=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
    cat > "$file" <<TOML
[api]
listen = "127.0.0.1:$port"
keys = [{ name = "bench", role = "$role", sha256 = "$(printf %s "$KEY" | sha256sum | cut -d' ' -f1)" }]
TOML
}
