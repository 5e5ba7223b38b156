"""The one exception family of LabelSharingSeg: every user-facing error says what is wrong and what to do."""


class LabelSharingSegError(Exception):
    """Base class of every error this project raises on purpose."""


class InputError(LabelSharingSegError):
    """An image, mask, affine or argument a user passed is unusable."""


class UnplacedScanError(InputError):
    """A scan has no trusted pose on a bundle's reference: its alignment was refused and its own world
    coordinates do not match the reference either, so it was not segmented."""


class DatasetError(LabelSharingSegError):
    """A dataset folder (nnU-Net v2 raw layout) is missing, unreadable or inconsistent."""


class LabelSpaceError(LabelSharingSegError):
    """A shared label space cannot be built or a task cannot be placed on it."""


class BundleError(LabelSharingSegError):
    """A model bundle is missing files, corrupt, tampered with or of an unexpected kind."""


class CancelledError(LabelSharingSegError):
    """The user cancelled a running job; nothing was written."""


class RegistrationError(LabelSharingSegError):
    """A registration diverged or failed its quality checks; its result was not used."""


class OutputError(LabelSharingSegError, OSError):
    """An output cannot be written (exists, equals an input, disk full, no permission); nothing was changed.

    Also an OSError, so code that guards a write with ``except OSError`` keeps working."""


class ConfigError(BundleError):
    """A configuration a bundle carries (manifest, preprocessing, network) is malformed or out of bounds."""
