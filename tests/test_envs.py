"""workflow/envs/*.yaml are valid conda environment files with the pip install's pins (pyproject.toml), so that
`--software-deployment-method conda` builds the environments each rule names. Conda channels cannot be reached here:
the files are checked against the environment-file format, and each one's pip part is built into a fresh virtual
environment, with its post-deploy script, where every entry point its rules call must start."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from pathlib import Path

import jsonschema
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
ENVS = sorted((ROOT / "workflow/envs").glob("*.yaml"))
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

# conda's environment.yml: a name, channels, and dependencies that are conda match specs or one `pip:` list.
MATCH_SPEC = r"^[A-Za-z0-9_.-]+(\s*(==|=|>=|<=|>|<|!=|~=)\s*[A-Za-z0-9_.*+!]+(,\s*(==|>=|<=|>|<|!=)\s*[A-Za-z0-9_.*+]+)*)?$"
ENV_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name", "channels", "dependencies"],
    "properties": {
        "name": {"type": "string", "pattern": r"^[A-Za-z0-9_.-]+$"},
        "channels": {"type": "array", "minItems": 1, "uniqueItems": True,
                     "items": {"type": "string", "pattern": r"^[A-Za-z0-9_.:/-]+$"}},
        "dependencies": {
            "type": "array", "minItems": 1,
            "items": {"oneOf": [
                {"type": "string", "pattern": MATCH_SPEC},
                {"type": "object", "additionalProperties": False, "required": ["pip"],
                 "properties": {"pip": {"type": "array", "minItems": 1, "items": {"type": "string"}}}},
            ]},
        },
        "variables": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}


def pinned(requirements) -> dict[str, str]:
    """name -> version of `name==version` requirements."""
    pins = {}
    for text in requirements:
        requirement = Requirement(text)
        (spec,) = requirement.specifier
        assert spec.operator == "==", f"{text}: not pinned with =="
        pins[canonicalize_name(requirement.name)] = spec.version
    return pins


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def pip_section(env: dict) -> list[str]:
    sections = [d["pip"] for d in env["dependencies"] if isinstance(d, dict)]
    assert len(sections) <= 1, "one pip: list"
    return sections[0] if sections else []


def rule_envs() -> dict[str, str]:
    """rule name -> the `conda:` file it names, from workflow/rules/*.smk."""
    envs = {}
    for smk in sorted((ROOT / "workflow/rules").glob("*.smk")):
        for block in re.split(r"\n(?=\s*(?:rule|checkpoint) \w+:)", smk.read_text()):
            name, conda = re.search(r"^\s*(?:rule|checkpoint) (\w+):", block), re.search(r"\n\s+conda:\s*\n?\s*\"([^\"]+)\"", block)
            if name and conda:
                envs[name.group(1)] = str((smk.parent / conda.group(1)).resolve())
    return envs


def test_there_are_environments():
    assert ENVS


@pytest.mark.parametrize("path", ENVS, ids=lambda p: p.name)
def test_environment_file_format(path):
    env = load(path)
    jsonschema.validate(env, ENV_SCHEMA)
    names = [re.split(r"[=<>!~ ]", d)[0] for d in env["dependencies"] if isinstance(d, str)]
    assert len(names) == len(set(names)), "a conda package listed twice"
    assert "nodefaults" in env["channels"] or "defaults" not in env["channels"]
    if pip_section(env):
        assert "pip" in names, "a pip: section needs pip among the conda dependencies"


@pytest.mark.parametrize("path", ENVS, ids=lambda p: p.name)
def test_python_satisfies_requires_python(path):
    (python,) = [d for d in load(path)["dependencies"] if isinstance(d, str) and re.match(r"python\b", d)]
    version = re.fullmatch(r"python\s*=+\s*([\d.]+)\*?", python).group(1)
    assert Version(version) in SpecifierSet(PYPROJECT["requires-python"])


@pytest.mark.parametrize("path", ENVS, ids=lambda p: p.name)
def test_pip_pins_are_those_of_pyproject(path):
    project = pinned(PYPROJECT["dependencies"] + PYPROJECT.get("optional-dependencies", {}).get("test", []))
    requirements = [r for r in pip_section(load(path)) if not r.startswith("-")]
    for name, version in pinned(requirements).items():
        assert name in project, f"{name} is pinned here but not in pyproject.toml"
        assert version == project[name], f"{name}=={version} here, =={project[name]} in pyproject.toml"


@pytest.mark.parametrize("path", ENVS, ids=lambda p: p.name)
def test_the_package_itself_is_installed_by_a_post_deploy_script_without_its_dependencies(path):
    """Not from the environment file: pip would resolve a relative path from wherever Snakemake copies the file
    (--conda-prefix), and `-e ../..` would bring every dependency of the package (torch into the data environment)."""
    assert not [r for r in pip_section(load(path)) if re.match(r"(-e|--editable)\b|\.", r)], "no local path"
    script = path.with_name(f"{path.stem}.post-deploy.sh")
    assert script.is_file(), f"{script.name} installs repgeom into {path.name}"
    installer = (path.parent / "install-repgeom.sh").read_text()
    assert 'pip install --quiet --no-deps --editable "$(dirname "$0")/../.."' in installer
    assert script.resolve().name == "install-repgeom.sh" or "install-repgeom.sh" in script.read_text()


def test_every_rule_with_a_command_names_an_existing_environment():
    envs = rule_envs()
    assert envs, "no conda: directives found"
    for rule, env in envs.items():
        assert Path(env).is_file(), f"rule {rule}: {env} does not exist"
        assert Path(env) in [p.resolve() for p in ENVS]


def test_pyproject_pins_every_dependency():
    """The pins the environments must match: every dependency of the pip install is pinned exactly."""
    assert pinned(PYPROJECT["dependencies"])


def rule_commands() -> dict[str, tuple[str, set[str]]]:
    """rule name -> (its environment file, the `python -m repgeom...` modules its command runs)."""
    envs, commands = rule_envs(), {}
    for smk in sorted((ROOT / "workflow/rules").glob("*.smk")):
        for block in re.split(r"\n(?=\s*(?:rule|checkpoint) \w+:)", smk.read_text()):
            name = re.search(r"^\s*(?:rule|checkpoint) (\w+):", block)
            if name and name.group(1) in envs:
                modules = set(re.findall(r"python -m (repgeom[\w.]*)", block))
                modules |= {"repgeom.provenance"} if "TRACKED" in block else set()
                commands[name.group(1)] = (envs[name.group(1)], modules)
    return commands


def test_each_rule_runs_repgeom_entry_points():
    commands = rule_commands()
    assert {"extract", "finetune", "analyze_layers", "sample"} <= set(commands)
    assert commands["extract"][1] == {"repgeom.provenance", "repgeom.launch", "repgeom.extract"}


def test_the_slurm_plugin_has_what_it_declares_but_numpy():
    """make installs snakemake-executor-plugin-slurm without its dependencies (it declares numpy>=2.4.5, which
    dadapy rules out): every other requirement it declares must hold here."""
    from packaging.requirements import Requirement

    declared = [Requirement(r) for r in metadata.requires("snakemake-executor-plugin-slurm")]
    assert metadata.version("snakemake-executor-plugin-slurm") == re.search(
        r"SLURM_PLUGIN := (\S+)", (ROOT / "Makefile").read_text()).group(1)
    for requirement in declared:
        if requirement.name == "numpy" or requirement.marker:
            continue
        assert metadata.version(requirement.name) in requirement.specifier, requirement


def build_environment(path: Path, folder: Path) -> tuple[dict[str, str], list[str]]:
    """A fresh venv (no system site-packages) with the environment's pip part and its post-deploy script; its
    environment variables, and the problems met (failed commands)."""
    folder.mkdir()
    venv = folder / "env"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    env = {**os.environ, "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}", "VIRTUAL_ENV": str(venv)}
    env.pop("PYTHONPATH", None)
    requirements = folder / "requirements.txt"
    requirements.write_text("\n".join(pip_section(load(path))) + "\n")
    for command in ([str(venv / "bin/python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-r",
                     str(requirements)], ["bash", str(path.with_name(f"{path.stem}.post-deploy.sh"))]):
        result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=folder, timeout=1500)
        if result.returncode:
            return env, [f"{' '.join(command)}:\n{result.stdout[-2000:]}{result.stderr[-3000:]}"]
    return env, []


@pytest.fixture(scope="module")
def built_environments(tmp_path_factory):
    """Every environment built at once (pip waits on disk as much as on the CPU)."""
    base = tmp_path_factory.mktemp("envs")
    with ThreadPoolExecutor(len(ENVS)) as pool:
        futures = {path: pool.submit(build_environment, path, base / path.stem) for path in ENVS}
    return {path: future.result() for path, future in futures.items()}


@pytest.mark.slow
@pytest.mark.parametrize("path", ENVS, ids=lambda p: p.stem)
def test_each_environment_runs_its_rules_entry_points(path, built_environments):
    """The `--help` of every entry point the environment's rules run, in the environment built from its file alone:
    a module its rules import but the environment lacks fails here."""
    env, problems = built_environments[path]
    assert not problems, problems[0]
    python = str(Path(env["VIRTUAL_ENV"]) / "bin/python")
    modules = sorted({m for env_file, ms in rule_commands().values() if Path(env_file) == path.resolve() for m in ms})
    assert modules
    for module in modules:
        result = subprocess.run([python, "-m", module, "--help"], capture_output=True, text=True, env=env, timeout=300)
        assert result.returncode == 0, f"{path.name}: python -m {module} --help:\n{result.stderr[-3000:]}"
    located = subprocess.run([python, "-c", "import repgeom; print(repgeom.__file__)"], capture_output=True,
                             text=True, env=env, check=True).stdout.strip()
    assert Path(located).is_relative_to(ROOT / "src"), located
