import json, time
from pathlib import Path
def test_hold(console):
    Path("/tmp/i11_dev/console.json").write_text(json.dumps({"url": console.url, "catalog": console.catalog_dsn, "source": console.source_dsn, "logs": str(console.logs), "env": console.env}))
    while not Path("/tmp/i11_dev/stop").exists():
        time.sleep(2)
