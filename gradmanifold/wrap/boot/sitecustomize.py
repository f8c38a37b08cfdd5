"""Start-up hook of `gradmanifold record -- COMMAND`, found through PYTHONPATH in the wrapped job only.

Python imports `sitecustomize` at start-up (module `site`). This one arms gradmanifold's recorder when
GRADMANIFOLD_RECORD_OUT is set (the recorder attaches when torch.optim is imported: nothing else is imported
here), then runs the sitecustomize that it shadows, if the environment has one. It never stops the job: a
failure is one line on stderr and the job runs unrecorded.
"""

import importlib.machinery
import importlib.util
import os
import sys


def _arm() -> None:
    if not os.environ.get("GRADMANIFOLD_RECORD_OUT"):
        return
    try:
        from gradmanifold.wrap.hook import arm

        arm()
    except Exception as exc:
        print(
            f"gradmanifold: recording disabled in this process: {type(exc).__name__}: {exc}", file=sys.stderr
        )


def _chain() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    for entry in sys.path:
        if os.path.abspath(entry or os.getcwd()) == here:
            continue
        spec = importlib.machinery.PathFinder.find_spec("sitecustomize", [entry])
        if spec is not None and spec.loader is not None:
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            return


_arm()
_chain()
