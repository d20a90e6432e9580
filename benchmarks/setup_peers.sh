#!/usr/bin/env bash
# Install what `benchmarks/bench.py` compares replyrank against, without touching the package's
# own dependencies:
#   - matplotlib into the current (main) environment: the plots' only dependency, benchmark-only;
#   - ctranslate2 and llama-cpp-python each into its own venv under benchmarks/.envs/<name>. The
#     venv sees the main environment through a `replyrank-main-env.pth` that runs site.addsitedir
#     on the main interpreter's site-packages (so its own .pth files, an editable install's
#     included, are processed): torch, transformers and replyrank come from the main env whether
#     it is a system Python, pyenv or itself a virtualenv (--system-site-packages from a venv's
#     interpreter would see the venv's base Python, not the venv).
# Binary wheels where PyPI has them; llama-cpp-python has none for linux-x86_64, so it is built
# from its source distribution (cmake + a C++ compiler, about 10 minutes on 2 cores, tuned to
# this CPU with GGML_NATIVE). A peer that still fails is reported as not installable by the bench.
#
#   bash benchmarks/setup_peers.sh            # all
#   bash benchmarks/setup_peers.sh ctranslate2
set -u
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python="${PYTHON:-python}"
wanted=("${@:-matplotlib ctranslate2 llamacpp}")
wanted=(${wanted[@]})
status=0

want() { [[ " ${wanted[*]} " == *" $1 "* ]]; }

venv() {  # venv NAME PIP-PACKAGE
    local env="$here/.envs/$1"
    [[ -x "$env/bin/python" ]] || "$python" -m venv "$env" || return 1
    see_main_env "$env" || return 1
    "$env/bin/python" -m pip install --quiet --only-binary=:all: "$2"
}

see_main_env() {  # see_main_env VENV: the main env's site-packages after the venv's own, .pth files processed
    local dirs peer_site
    dirs="$("$python" -c 'import site, sys, sysconfig; print(repr(sorted({sysconfig.get_path("purelib"), sysconfig.get_path("platlib"), *site.getsitepackages()})))')" || return 1
    peer_site="$("$1/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')" || return 1
    # one line, run by site.py at startup (a .pth line that starts with "import"); map, not a list
    # comprehension, whose own scope would not see the imported name
    echo "import site; list(map(site.addsitedir, $dirs))" > "$peer_site/replyrank-main-env.pth"
    "$1/bin/python" -c "import replyrank" || { echo "$1: still no replyrank from the main env ($dirs)" >&2; return 1; }
}

if want matplotlib; then
    "$python" -c "import matplotlib" 2>/dev/null || "$python" -m pip install --quiet --only-binary=:all: matplotlib \
        || { echo "matplotlib: install failed; bench.py will write no plots" >&2; status=1; }
fi
if want ctranslate2; then
    rm -f "$here/.envs/ctranslate2.unavailable"
    if ! venv ctranslate2 ctranslate2; then
        echo "ctranslate2: no binary wheel installed; bench.py reports it as not installable" >&2
        rm -rf "$here/.envs/ctranslate2"
        echo "pip install --only-binary=:all: ctranslate2 failed (benchmarks/setup_peers.sh, $(date -u +%F))" > "$here/.envs/ctranslate2.unavailable"
        status=1
    fi
fi
if want llamacpp; then
    rm -f "$here/.envs/llamacpp.unavailable"
    if ! venv llamacpp llama-cpp-python \
        && ! CMAKE_ARGS="-DGGML_NATIVE=ON" "$here/.envs/llamacpp/bin/python" -m pip install --quiet llama-cpp-python; then
        echo "llama-cpp-python: neither a wheel nor a source build installed; bench.py reports it as not installable" >&2
        rm -rf "$here/.envs/llamacpp"  # an empty venv would make bench.py run the system only to fail its import
        echo "pip install --only-binary=:all: llama-cpp-python failed, wheel and source build, on $("$python" -c 'import sysconfig; print(sysconfig.get_platform())') (benchmarks/setup_peers.sh, $(date -u +%F))" \
            > "$here/.envs/llamacpp.unavailable"
        status=1
    fi
fi
exit $status
