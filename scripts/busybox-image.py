#!/usr/bin/env python3
"""Make an OCI image of this machine's static busybox, for trying berth with no registry at all:

    python3 scripts/busybox-image.py busybox.tar      # needs Debian's busybox-static
    sudo berth image import busybox.tar              # now pods can run busybox:1.36

The image holds busybox with its applets, /etc/passwd and a /var/www/index.html for httpd. It
is built by the same code the end-to-end tests build their images with.
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.realpath(__file__)), "..", "tests", "e2e"))

from images import Image  # noqa: E402


def main():
    if len(sys.argv) != 2:
        sys.exit(f"usage: {sys.argv[0]} OUTPUT.tar")
    busybox = "/bin/busybox"
    if not os.path.exists(busybox):
        sys.exit("no /bin/busybox: install Debian's busybox-static (apt-get install busybox-static)")
    name = os.environ.get("IMAGE_NAME", "busybox:1.36")
    with open(sys.argv[1], "wb") as f:
        f.write(Image(cmd=["sh"]).oci_layout(name))
    print(f"wrote {sys.argv[1]} ({name})")


if __name__ == "__main__":
    main()
