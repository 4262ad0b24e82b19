"""The ``confdiff`` entry point: fast ``--version`` / ``--help``, one module per subcommand, imported when it runs."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

import confdiff

from confdiff.cli import COMMANDS, main

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "e3nn", "torch_geometric", "rdkit")


@pytest.mark.parametrize("flag", ["--version", "--help"])
def test_version_and_help_import_neither_e3nn_nor_torch_geometric(flag):
    code = ("import sys\nfrom confdiff.cli import main\ntry:\n    main([%r])\nexcept SystemExit:\n    pass\n"
            "import json\nprint(json.dumps(sorted(m for m in %r if m in sys.modules)), file=sys.stderr)") % (flag, HEAVY)
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stderr.strip().splitlines()[-1]) == []
    expected = [f"confdiff {confdiff.__version__}"] if flag == "--version" else COMMANDS
    assert all(text in proc.stdout for text in expected)


def test_every_subcommand_module_lives_in_the_cli_package_and_parses():
    for name, (module, _) in COMMANDS.items():
        assert module == f"confdiff.cli.{name}"
        with pytest.raises(SystemExit) as exit_:
            main([name, "--help"])
        assert exit_.value.code == 0


def test_no_subcommand_prints_help(capsys):
    assert main([]) == 0
    assert "COMMAND" in capsys.readouterr().out
