"""Hardware targets: validated profiles (``hw_profiles/*.yaml``) and energy readings (sensors)."""

from autoprune.hardware.profile import (
    TARGETS,
    CalibrationInfo,
    DeviceFacts,
    HardwareProfile,
    PowerMode,
    ProcessorFacts,
    list_profiles,
    load_profile,
)

__all__ = [
    "TARGETS",
    "CalibrationInfo",
    "DeviceFacts",
    "HardwareProfile",
    "PowerMode",
    "ProcessorFacts",
    "list_profiles",
    "load_profile",
]
