"""Numerics modes and the hardware fingerprint every record carries."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from harness.cli import main
from harness.errors import ConfigError
from harness.numerics import NUMERICS_ENV, apply_numerics, requested_mode
from harness.provenance import hardware_fingerprint, hardware_label
from harness.results.report import consistency_warnings, hardware_note

ROOT = Path(__file__).resolve().parents[1]
CLEAN_ENV = {k: v for k, v in os.environ.items() if k not in ("ATEN_CPU_CAPABILITY", "MKL_CBWR", NUMERICS_ENV)}

FINGERPRINT_OF_A_FRESH_PROCESS = """
import json, sys
from harness.cli import _apply_numerics
_apply_numerics(sys.argv[1:])
import torch
from harness.provenance import hardware_fingerprint
a = torch.randn(8, 8)
(a @ a).sum()
print(json.dumps(hardware_fingerprint()))
"""


def fingerprint_of_fresh_process(*argv: str, env: dict | None = None) -> dict:
    done = subprocess.run([sys.executable, "-c", FINGERPRINT_OF_A_FRESH_PROCESS, *argv], capture_output=True,
                          text=True, cwd=ROOT, env=env or CLEAN_ENV, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_portable_mode_pins_every_library_and_says_so():
    native = fingerprint_of_fresh_process()
    portable = fingerprint_of_fresh_process("--numerics", "portable")
    assert native["numerics"] == "native"
    assert native["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert portable["numerics"] == "portable"
    assert portable["cpu_capability"] == "AVX2"
    assert {k: v for k, v in portable.items() if k not in ("numerics", "cpu_capability")} == \
        {k: v for k, v in native.items() if k not in ("numerics", "cpu_capability")}
    # the environment variable asks for the same mode as the option
    assert fingerprint_of_fresh_process(env={**CLEAN_ENV, NUMERICS_ENV: "portable"})["numerics"] == "portable"


def test_a_partial_setting_is_not_called_portable():
    only_aten = fingerprint_of_fresh_process(env={**CLEAN_ENV, "ATEN_CPU_CAPABILITY": "avx2"})
    assert only_aten["numerics"].startswith("custom:") and "AVX2" in only_aten["numerics"]


def test_bad_numerics_requests_are_refused_before_anything_runs(capsys, monkeypatch):
    assert main(["--numerics", "fast", "methods"]) == 2
    assert "fast" in capsys.readouterr().err
    monkeypatch.setenv(NUMERICS_ENV, "fast")
    with pytest.raises(ConfigError, match=f"{NUMERICS_ENV}='fast'.*native, portable"):
        requested_mode()
    assert main(["methods"]) == 2
    assert f"{NUMERICS_ENV}='fast'" in capsys.readouterr().err


def test_a_mode_cannot_change_once_torch_runs():
    # this test process imported torch in the native mode: portable would be a lie in every record
    with pytest.raises(ConfigError, match="before torch is imported"):
        apply_numerics("portable")
    env = {"ATEN_CPU_CAPABILITY": "avx512"}
    with pytest.raises(ConfigError, match="ATEN_CPU_CAPABILITY=avx512"):
        apply_numerics("portable", env)


def test_records_carry_the_fingerprint(tiny_config):
    from harness.trial import run_trial

    result = run_trial(tiny_config(**{"train.threads": 1}))
    assert result.status == "ok", result.failure
    fingerprint = json.loads(result.records[0]["hardware"])
    assert fingerprint["threads"] == 1
    assert fingerprint["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert fingerprint["numerics"] == "native"
    assert fingerprint["cpu"] and fingerprint["cpu"] in result.records[0]["device"]
    assert result.records[0]["device"].endswith(", 1 thread)")


def test_label_names_gpu_versions_and_host():
    cpu = {"cpu": "AMD EPYC", "cpu_capability": "AVX512", "threads": 2, "numerics": "native"}
    assert hardware_label(cpu) == "cpu (AMD EPYC, AVX512, 2 threads)"
    assert hardware_label({**cpu, "threads": 1, "numerics": "portable"}) == \
        "cpu (AMD EPYC, AVX512, 1 thread, portable numerics)"
    gpu = {**cpu, "gpu": "NVIDIA H200", "cuda": "13.0", "cudnn": "92400", "driver": "580.1"}
    assert hardware_label(gpu) == "NVIDIA H200 (CUDA 13.0, cuDNN 92400, driver 580.1; host AMD EPYC, AVX512, 2 threads)"
    assert set(hardware_fingerprint()) >= {"cpu", "cpu_vendor", "cpu_capability", "threads", "numerics"}


def _records(*hardware: dict) -> pd.DataFrame:
    return pd.DataFrame([{"status": "ok", "trial_key": f"k{i}", "hardware": json.dumps(h),
                          "device": hardware_label(h)} for i, h in enumerate(hardware)])


def test_tables_warn_on_mixed_hardware_and_name_it_in_the_caption():
    intel = {"cpu": "Intel Xeon", "cpu_vendor": "GenuineIntel", "cpu_capability": "AVX512", "threads": 1,
             "numerics": "native"}
    amd = {**intel, "cpu": "AMD EPYC", "cpu_vendor": "AuthenticAMD"}
    assert consistency_warnings(_records(intel, dict(intel))) == []
    assert hardware_note(_records(intel, dict(intel))) == "Computed on cpu (Intel Xeon, AVX512, 1 thread)."
    (warning,) = consistency_warnings(_records(intel, amd))
    assert "different hardware" in warning and "AMD EPYC / Intel Xeon" in warning and "AuthenticAMD" in warning
    assert "threads" not in warning
    assert hardware_note(_records(intel, amd)).startswith("Computed on several machines: cpu (AMD EPYC")
