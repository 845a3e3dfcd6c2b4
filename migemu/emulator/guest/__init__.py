"""The emulated guest's memory activity (emulator layer): per-block dirty logging, zero-page
detection over page runs, realistic seeded memory images, and the vCPU workloads that dirty
guest RAM while a migration runs.

Import the submodules (``dirty``, ``zero``, ``image``, ``workload``, ``bootsect``,
``vcpu_section``) directly: this package re-exports nothing, so that starting migemu does not
import numpy before a workload or a migration needs it.
"""
