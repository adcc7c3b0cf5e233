"""The GPU's load, memory and temperature for the health message and the metrics endpoint.

Workstation GPUs through NVML (``nvidia-ml-py``, the ``gpu`` extra; the driver ships libnvidia-ml);
a Jetson through its sysfs, as tegrastats reads it: the GPU's devfreq ``load`` (per mille), the
thermal zone named for the GPU, and /proc/meminfo (the CPU and GPU share one memory). Neither: no
GPU section. A probe that fails once is logged and stays quiet after (health must not spam).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

log = logging.getLogger(__name__)

# Orin (JetPack 5/6) first, then Xavier/TX2/Nano (the load file's place moved between L4T releases)
JETSON_LOAD = (
    "sys/class/devfreq/17000000.gpu/device/load",
    "sys/devices/platform/17000000.gpu/load",
    "sys/devices/platform/gpu.0/load",
    "sys/devices/gpu.0/load",
)
JETSON_THERMAL = ("gpu-thermal", "GPU-therm")


@dataclass(frozen=True)
class GpuSample:
    name: str
    source: str  # nvml | jetson
    utilisation_percent: float | None
    memory_used_mb: float | None
    memory_total_mb: float | None
    temperature_c: float | None


class GpuProbe(Protocol):
    def sample(self) -> GpuSample | None: ...


class NvmlProbe:
    """The first NVIDIA GPU through NVML."""

    def __init__(self, index: int = 0) -> None:
        import pynvml  # nvidia-ml-py; ImportError or NVMLError: no NVML here

        pynvml.nvmlInit()
        self._nvml = pynvml
        self._handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        name = pynvml.nvmlDeviceGetName(self._handle)
        self.name = name.decode() if isinstance(name, bytes) else str(name)

    def sample(self) -> GpuSample:
        nvml, handle = self._nvml, self._handle
        memory = nvml.nvmlDeviceGetMemoryInfo(handle)
        return GpuSample(
            name=self.name,
            source="nvml",
            utilisation_percent=float(nvml.nvmlDeviceGetUtilizationRates(handle).gpu),
            memory_used_mb=round(memory.used / 2**20, 1),
            memory_total_mb=round(memory.total / 2**20, 1),
            temperature_c=float(nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU)),
        )


class JetsonProbe:
    """A Jetson's integrated GPU through sysfs (``root`` is / on the box; a folder in tests)."""

    def __init__(self, root: Path = Path("/")) -> None:
        self.root = root
        load = next((root / p for p in JETSON_LOAD if (root / p).exists()), None)
        if load is None:
            raise FileNotFoundError("no Jetson GPU load file")
        self._load = load
        self._thermal: Path | None = None
        for zone in sorted((root / "sys/class/thermal").glob("thermal_zone*")):
            try:
                if (zone / "type").read_text().strip() in JETSON_THERMAL:
                    self._thermal = zone / "temp"
                    break
            except OSError:
                continue
        model = root / "proc/device-tree/model"
        self.name = model.read_text().strip("\x00\n ") if model.exists() else "Jetson"

    def sample(self) -> GpuSample:
        load = float(self._load.read_text().strip()) / 10  # per mille
        temperature = float(self._thermal.read_text().strip()) / 1000 if self._thermal else None
        meminfo = {}
        for line in (self.root / "proc/meminfo").read_text().splitlines():
            key, _, value = line.partition(":")
            meminfo[key] = float(value.split()[0]) / 1024  # kB -> MB
        total = meminfo.get("MemTotal")
        used = total - meminfo["MemAvailable"] if total is not None and "MemAvailable" in meminfo else None
        return GpuSample(
            name=self.name,
            source="jetson",
            utilisation_percent=round(load, 1),
            memory_used_mb=round(used, 1) if used is not None else None,
            memory_total_mb=round(total, 1) if total is not None else None,
            temperature_c=round(temperature, 1) if temperature is not None else None,
        )


class Quiet:
    """A probe whose failures are logged once, then answer None."""

    def __init__(self, probe: GpuProbe) -> None:
        self.probe = probe
        self._failed = False

    def sample(self) -> GpuSample | None:
        try:
            sample = self.probe.sample()
        except Exception as exc:  # NVML and sysfs raise their own kinds; health goes on without the GPU
            if not self._failed:
                log.warning("GPU figures unavailable: %s", exc)
            self._failed = True
            return None
        self._failed = False
        return sample


def find_gpu(root: Path = Path("/")) -> GpuProbe | None:
    """The Jetson's sysfs on a Jetson, NVML where a driver answers, else None."""
    if (root / "etc/nv_tegra_release").exists():
        try:
            return Quiet(JetsonProbe(root))
        except (OSError, ValueError) as exc:
            log.info("Jetson GPU figures unavailable: %s", exc)
    try:
        return Quiet(NvmlProbe())
    except Exception as exc:  # ImportError (no nvidia-ml-py) or NVMLError (no driver)
        log.debug("no NVML: %s", exc)
    return None
