"""The emulated guest's memory activity (emulator layer): per-block dirty logging, zero-page
detection over page runs, realistic seeded memory images, and the vCPU workloads that dirty
guest RAM while a migration runs."""

from migemu.emulator.guest.dirty import (
    DirtyBitmap,
    DirtyRateMeter,
    DirtySnapshot,
    mask_runs,
)
from migemu.emulator.guest.image import (
    DEFAULT_MIX,
    KINDS,
    ImageMix,
    ImageMixError,
    ImageStats,
    PageSource,
    fill_image,
    write_image,
)
from migemu.emulator.guest.workload import (
    Clock,
    DirtySpec,
    GuestWorkload,
    SweepSpec,
    SweepWorkload,
    SystemClock,
    Workload,
    WorkloadError,
    WorkloadSpec,
    WorkloadSpecError,
    check_sweep,
    create_workload,
    parse_workload_spec,
)
from migemu.emulator.guest.zero import (
    is_zero_range,
    nonzero_pages,
    split_zero_runs,
    zero_pages,
)

__all__ = [
    "DEFAULT_MIX",
    "KINDS",
    "Clock",
    "DirtyBitmap",
    "DirtyRateMeter",
    "DirtySnapshot",
    "DirtySpec",
    "GuestWorkload",
    "ImageMix",
    "ImageMixError",
    "ImageStats",
    "PageSource",
    "SweepSpec",
    "SweepWorkload",
    "SystemClock",
    "Workload",
    "WorkloadError",
    "WorkloadSpec",
    "WorkloadSpecError",
    "check_sweep",
    "create_workload",
    "fill_image",
    "is_zero_range",
    "mask_runs",
    "nonzero_pages",
    "parse_workload_spec",
    "split_zero_runs",
    "write_image",
    "zero_pages",
]
