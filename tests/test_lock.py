"""The reference tables are reproducible: the README's first command installs from the lock file."""

import re
from pathlib import Path

import tomllib
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements" / "lock.txt"


def _pins() -> dict[str, str]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep, f"lock line without an exact pin: {line!r}"
            pins[name.lower().replace("_", "-")] = version
    return pins


def test_readme_first_command_installs_from_the_lock():
    readme = (ROOT / "README.md").read_text()
    first_block = re.search(r"```bash\n(.*?)```", readme, re.DOTALL).group(1)
    first_command = first_block.strip().splitlines()[0]
    assert "pip install -c requirements/lock.txt" in first_command
    assert "vireid sweep benchmarks/ablation_synthetic.yaml" in first_command


def test_lock_pins_the_stack_exactly_and_inside_the_install_ranges():
    pins = _pins()
    for name in ("torch", "torchvision", "timm", "numpy", "scipy", "pandas", "matplotlib"):
        assert re.fullmatch(r"\d+(\.\d+)+(\.post\d+)?", pins[name]), (name, pins[name])
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for spec in project["dependencies"]:
        req = Requirement(spec)
        assert req.name.lower() in pins, f"{req.name} is not pinned in {LOCK.name}"
        assert req.specifier.contains(pins[req.name.lower()]), f"{req.name}=={pins[req.name.lower()]} outside {spec}"
    # ranges stay ranges: the preinstalled torch 2.11 stack of the GPU machines installs without the lock
    torch = next(Requirement(s) for s in project["dependencies"] if Requirement(s).name == "torch")
    assert torch.specifier.contains("2.11.0")


def test_ci_runs_exactly_the_readme_test_command_from_the_lock():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", readme, re.DOTALL)
    test_command = blocks[1].strip().splitlines()[0]
    assert "pip install -c requirements/lock.txt" in test_command
    assert test_command.endswith("-m pytest")
    ci_lines = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line.strip()]
    assert ci_lines[-1] == test_command
