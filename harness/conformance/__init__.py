"""The conformance runner: unmodified Linux drivers against devmodels devices in real guests.

``devmodels conformance`` boots one QEMU (TCG) guest per case, with the device served by
devmodels over an attachment path (QEMU's ``x-pci-proxy-dev``, vhost-user), and prints a
matrix of driver x device x path with the checks each guest and its host side made.
"""

from ._case import Attachment, Case, Row
from ._registry import PROVIDERS, load_cases
from ._runner import build_case_image, format_matrix, run_cases

__all__ = ["Attachment", "Case", "Row", "PROVIDERS", "load_cases", "build_case_image", "format_matrix", "run_cases"]
