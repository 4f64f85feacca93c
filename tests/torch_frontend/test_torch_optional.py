"""PyTorch is optional: lopt imports and works without it, and lopt.torch says how to get it."""

import subprocess
import sys
import textwrap


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300
    )


def test_core_never_imports_torch_and_lopt_torch_explains_the_extra():
    result = run_python(
        """
        import sys
        sys.modules["torch"] = None  # as if torch were not installed
        import lopt, lopt.optimizers, lopt.tasks, lopt.metatrain, lopt.analysis, lopt.cli.main
        lopt.star()
        try:
            import lopt.torch
        except ImportError as err:
            print("IMPORT-ERROR:", err)
        """
    )
    assert result.returncode == 0, result.stderr
    assert "IMPORT-ERROR: lopt.torch needs PyTorch" in result.stdout
    assert "pip install 'lopt[torch]'" in result.stdout
