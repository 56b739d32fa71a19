"""``python -m itemjax.native``: whether the native CSR kernel is built and usable here (exit status 0),
or why not and how to build it (exit status 1); and, on a second line, the same for the forward-push PPR
library (``--ppr-backend push``; it does not change the exit status)."""

import sys

from itemjax import native
from itemjax.native import ppr_push


def main() -> int:
    status = native.status()
    if status["available"]:
        print(f"native CSR kernel: available ({status['path']})")
    else:
        print(f"native CSR kernel: unavailable ({status['reason']}); --backend native runs the csr backend instead; "
              f"to use it, {native.fix()}")
    push = ppr_push.status()
    if push["available"]:
        print(f"forward-push PPR library: available ({push['path']})")
    else:
        print(f"forward-push PPR library: unavailable ({push['reason']}); --ppr-backend push runs the device backend "
              f"instead; to use it, {ppr_push.fix()}")
    return 0 if status["available"] else 1


if __name__ == "__main__":
    sys.exit(main())
