"""An installed catalog (a built wheel, not this checkout) creates and upgrades its schema."""
from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).parent.parent


def test_wheel_ships_migrations_and_upgrades_a_database(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(tmp_path), str(ROOT)],
                   check=True, capture_output=True)
    wheel = next(tmp_path.glob("catalog-*.whl"))
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        z.extractall(site)
    assert "catalog/migrations/env.py" in names and "catalog/migrations/script.py.mako" in names
    assert any(n.startswith("catalog/migrations/versions/0001") for n in names)
    code = ("import catalog, sys; assert catalog.__file__.startswith(sys.argv[1]), catalog.__file__\n"
            "from catalog.db import make_engine, current_revision, head_revision\n"
            "e = make_engine('sqlite:///' + sys.argv[2]); assert current_revision(e) == head_revision(); print('ok')")
    result = subprocess.run([sys.executable, "-c", code, str(site), str(tmp_path / "c.db")], cwd=tmp_path,
                            env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}, capture_output=True, text=True)
    assert result.stdout.strip() == "ok", result.stderr
