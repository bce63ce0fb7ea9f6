"""Child process for test_suspend: run the approval workflow until it suspends.

Usage: approval_child.py JOURNAL_DIR LEDGER INSTANCE_ID

Opens an engine on the journal directory, invokes the approval workflow
under INSTANCE_ID, waits until the instance is suspended, prints its status
as one JSON line and leaves the engine block (a clean exit: the process
ends with nothing of the workflow left anywhere but the journal).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # tests/, for the helpers

from support.suspend import approval, until_state

from memable_log import Engine


async def main(journal: str, ledger: str, instance_id: str) -> None:
    engine = Engine.builder().open(journal).build()
    engine.register("approval", approval(Path(ledger)))
    async with engine:
        await engine.invoke("approval", 42, instance_id=instance_id)
        with trio.fail_after(30):
            await until_state(engine, instance_id, "suspended")
        status = engine.status(instance_id)
        line = {"state": status.state, "key": status.key, "status": status.status}
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    journal, ledger, instance_id = sys.argv[1:4]
    trio.run(main, journal, ledger, instance_id)
