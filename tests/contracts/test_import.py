"""`import contracts` stays light: no heavy optional dependency is imported."""

import subprocess
import sys


def test_import_contracts_and_diagnostics_is_light():
    code = (
        "import sys, contracts, diagnostics, models\n"
        "heavy = [m for m in ('matplotlib', 'tensorboard', 'umap', 'hypothesis', 'pytest',"
        " 'sklearn', 'scipy') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "", f"heavy modules imported: {r.stdout}"
