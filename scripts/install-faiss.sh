#!/usr/bin/env bash
# Installs what `facegroup-core`'s FAISS kNN graph links against, on Debian 12 (bookworm).
#
# Why this way: Debian's libfaiss-dev (FAISS 1.7.3) ships the C API headers but its libfaiss.a
# lacks the C API itself, which the `faiss` crate (=0.12.1, FAISS C API 1.7.x) calls. Compiling
# the 20 c_api/*.cpp files of Debian's own source package takes ~25 s on 2 cores, whereas the
# crate's `static` feature builds all of FAISS 1.12 from source (~10 CPU-minutes, plus cmake).
#
# Result, in LIBDIR (default /usr/lib/<multiarch> as root, else <repo>/.cache/faiss/lib):
#   libfaiss_c_api.a  the compiled C API
#   libfaiss_c.so     a GNU ld *linker script* (not an ELF library) that the crate's `-lfaiss_c`
#                     finds; it pulls the C API, Debian's static libfaiss.a and FAISS's shared
#                     dependencies (BLAS, LAPACK, OpenMP, libstdc++) in the right order, so no
#                     build.rs or link-order flags are needed and nothing is loaded at run time.
#
# Why /usr/lib/<multiarch> and not /usr/local/lib: rustc links with rust-lld, which (unlike GNU
# ld) has no built-in /usr/local/lib; gcc only hands it its own directories. Next to Debian's
# libfaiss.a every cargo build links with no environment at all. Debian ships no libfaiss_c*,
# so nothing a package owns is overwritten.
#
# Idempotent: re-running with everything in place only checks and prints the environment.
# Usage: scripts/install-faiss.sh [LIBDIR]
set -euo pipefail

repo_root="$(cd "$(dirname "$0")/.." && pwd)"
multiarch="$(gcc -print-multiarch 2>/dev/null || echo x86_64-linux-gnu)"
system_libdir="/usr/lib/$multiarch"
if [[ $(id -u) -eq 0 ]]; then
    default_libdir="$system_libdir"
    sudo=""
else
    default_libdir="$repo_root/.cache/faiss/lib"
    sudo="sudo"
fi
libdir="${1:-${FAISS_LIBDIR:-$default_libdir}}"
stamp="$libdir/.facegroup-faiss-c-1.7.3"

print_env() {
    echo "FAISS C API ready in $libdir"
    if [[ "$libdir" != "$system_libdir" ]]; then
        echo "Set before cargo build (static linking: nothing is needed at run time):"
        echo "  export LIBRARY_PATH=\"$libdir\${LIBRARY_PATH:+:\$LIBRARY_PATH}\""
    else
        echo "No environment variables needed ($libdir is on the linker's search path)."
    fi
}

if [[ -f "$stamp" && -f "$libdir/libfaiss_c_api.a" && -f "$libdir/libfaiss_c.so" ]]; then
    print_env
    exit 0
fi

start=$(date +%s)
export DEBIAN_FRONTEND=noninteractive
# deb-src for `apt-get source`; the stock bookworm image lists only binary repositories.
if ! grep -rqs "^Types:.*deb-src\|^deb-src" /etc/apt/sources.list /etc/apt/sources.list.d/; then
    echo "Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg" | $sudo tee /etc/apt/sources.list.d/facegroup-deb-src.sources >/dev/null
    $sudo apt-get update -q
fi
$sudo apt-get install -y -q --no-install-recommends \
    libfaiss-dev libopenblas-dev liblapack-dev libgomp1 g++ dpkg-dev >/dev/null

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
(cd "$work" && apt-get source -q --download-only faiss >/dev/null && dpkg-source -x --skip-patches faiss_*.dsc src >/dev/null)
src="$work/src"
[[ -d "$src/c_api" ]] || { echo "faiss source package has no c_api/" >&2; exit 1; }

# Compile against Debian's installed headers so the C API matches the libfaiss.a it wraps.
mkdir -p "$work/obj"
jobs="$(nproc)"
find "$src/c_api" -name '*.cpp' -not -path '*/gpu/*' -print0 |
    xargs -0 -P "$jobs" -I{} sh -c \
        'g++ -std=c++17 -O2 -fPIC -fopenmp -I/usr/include -I"$1" -c "$2" -o "$3/$(basename "$2" .cpp).o"' \
        _ "$src" {} "$work/obj"
$sudo mkdir -p "$libdir"
ar rcs "$work/libfaiss_c_api.a" "$work"/obj/*.o
$sudo install -m 644 "$work/libfaiss_c_api.a" "$libdir/libfaiss_c_api.a"
printf '/* facegroup: FAISS C API + Debian libfaiss.a, see scripts/install-faiss.sh */\nGROUP ( %s %s/libfaiss.a AS_NEEDED ( -llapack -lblas -lgomp -lstdc++ -lm ) )\n' \
    "$libdir/libfaiss_c_api.a" "$system_libdir" | $sudo tee "$libdir/libfaiss_c.so" >/dev/null
$sudo touch "$stamp"
echo "built the FAISS C API in $(( $(date +%s) - start )) s"
print_env
