"""``python -m itemjax.native``: whether the native CSR kernel is built and usable here (exit status 0),
or why not and how to build it (exit status 1)."""

import sys

from itemjax import native


def main() -> int:
    status = native.status()
    if status["available"]:
        print(f"native CSR kernel: available ({status['path']})")
        return 0
    print(f"native CSR kernel: unavailable ({status['reason']}); --backend native runs the csr backend instead; "
          f"to use it, {native.fix()}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
