"""Peak extra memory of ``load_xray`` per film, against the film's decoded 8-bit size (issue 15).

The issue's three hostile cases (a 7000x7000 RGBA PNG of ~200 KB, a 147 MB 7000x7000 RGB DICOM, a
1.5 MB RLE DICOM declaring 7000x7000) and ordinary films (a 2000x2500 16-bit DICOM, a 2000x2500 colour
PNG, a 4000x4000 RGB DICOM) each decode in a fresh Python process, twice:

- ``tracemalloc``: the peak of Python and NumPy allocations during the call (native decoder
  buffers, such as Pillow's image memory, are not traced);
- RSS: the process's resident high-water mark during the call (``VmHWM`` after resetting it through
  ``/proc/self/clear_refs``; ``ru_maxrss`` where that is not available), minus the resident size before.

Each is divided by the film's decoded 8-bit size (rows x columns bytes, single channel): the bound
issue 15 sets is about 10x. The file's own bytes are read before measuring and not counted. A refused
film shows the refusal's message and what refusing cost.

    python bench/bench_decode_memory.py [--quick] [--keep DIR]
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))


# --- inputs ----------------------------------------------------------------------------------------


def _png(arr: np.ndarray) -> bytes:
    import cv2

    if arr.ndim == 3:  # cv2 writes BGR(A)
        arr = np.ascontiguousarray(arr[..., [2, 1, 0, 3][: arr.shape[-1]]])
    ok, buf = cv2.imencode(".png", arr, [cv2.IMWRITE_PNG_COMPRESSION, 9])
    assert ok
    return buf.tobytes()


def _banded(h: int, w: int, channels: int, dtype=np.uint8) -> np.ndarray:
    """Rows of one colour each (compresses to almost nothing, as the issue's 190 KB PNG does)."""
    top = np.iinfo(dtype).max
    rows = (np.linspace(0.1, 0.9, h) * top).astype(dtype)
    out = np.empty((h, w, channels) if channels > 1 else (h, w), dtype)
    if channels == 1:
        out[:] = rows[:, None]
        return out
    for c in range(channels):
        out[..., c] = rows[:, None] if c < 3 else top
    out[: h // 2, :, 0] //= 2  # some colour
    return out


def _dicom(arr: np.ndarray | None, *, rows: int, cols: int, samples: int, bits: int,
           rle: bytes | None = None) -> bytes:
    """A DX file holding ``arr`` uncompressed, or ``rle`` (encapsulated RLE Lossless frame data)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import ExplicitVRLittleEndian, RLELossless, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = RLELossless if rle is not None else ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns, ds.SamplesPerPixel = rows, cols, samples
    ds.PhotometricInterpretation = "RGB" if samples == 3 else "MONOCHROME2"
    if samples == 3:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, bits - 1, 0
    if rle is not None:
        ds.PixelData = encapsulate([rle])
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
    else:
        ds.PixelData = arr.tobytes()
        ds["PixelData"].VR = "OW" if bits > 8 else "OB"
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _rle_frame(rows: int, cols: int) -> bytes:
    """RLE Lossless data of a 16-bit film whose rows are each one value (PackBits replicate runs, two segments)."""
    values = (np.linspace(0.1, 0.9, rows) * 65535).astype(np.uint16)
    full, rest = divmod(cols, 128)

    def segment(byte_of_row: np.ndarray) -> bytes:
        out = bytearray()
        for v in byte_of_row.tolist():
            out += bytes((129, v)) * full  # 129 = -127: repeat the next byte 128 times
            if rest:
                out += bytes((257 - rest if rest > 1 else 0, v))
        return bytes(out)

    high, low = segment(values >> 8), segment(values & 0xFF)
    header = np.zeros(16, "<u4")
    header[0], header[1], header[2] = 2, 64, 64 + len(high)
    data = header.tobytes() + high + low
    return data + b"\x00" * (len(data) % 2)


def build_cases(quick: bool) -> list[tuple[str, bytes, tuple[int, int]]]:
    """(case, file bytes, declared (rows, cols)) for each case; ``quick`` halves the big sides."""
    big = 3500 if quick else 7000
    mid = 2000 if quick else 4000
    cases = [
        (f"RGBA PNG {big}x{big} (issue)", _png(_banded(big, big, 4)), (big, big)),
        (f"RGB DICOM {big}x{big} 8-bit (issue)",
         _dicom(_banded(big, big, 3), rows=big, cols=big, samples=3, bits=8), (big, big)),
        (f"RLE DICOM {big}x{big} 16-bit (issue)",
         _dicom(None, rows=big, cols=big, samples=1, bits=16, rle=_rle_frame(big, big)), (big, big)),
        (f"RGB DICOM {mid}x{mid} 8-bit",
         _dicom(_banded(mid, mid, 3), rows=mid, cols=mid, samples=3, bits=8), (mid, mid)),
    ]
    rng = np.random.default_rng(0)
    grey16 = (_banded(2500, 2000, 1, np.uint16) + rng.integers(0, 512, (2500, 2000), dtype=np.uint16))
    cases.append(("DICOM 2000x2500 16-bit grey", _dicom(grey16, rows=2500, cols=2000, samples=1, bits=16),
                  (2500, 2000)))
    colour = _banded(2500, 2000, 3) + rng.integers(0, 16, (2500, 2000, 3), dtype=np.uint8)
    cases.append(("RGB PNG 2000x2500", _png(colour), (2500, 2000)))
    return cases


# --- one measurement, in a fresh process ------------------------------------------------------------


def _resident() -> tuple[int, int]:
    """(VmRSS, VmHWM) in bytes from /proc/self/status; (0, ru_maxrss) where there is no /proc."""
    try:
        fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
        return int(fields["VmRSS"].split()[0]) * 1024, int(fields["VmHWM"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return 0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def child(path: str, mode: str) -> None:
    """Decode ``path`` once (after warming its decoder on a small film) and print what it cost as JSON."""
    import tracemalloc

    from cxr_core.errors import CXRError
    from cxr_core.io.imaging import load_xray

    data = Path(path).read_bytes()
    warm = Path(path).with_suffix(".warm")
    try:
        load_xray(warm.read_bytes())  # imports and decoder set-up are not the film's cost
    except CXRError:
        pass
    result: dict = {}
    if mode == "trace":
        tracemalloc.start()
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
    else:
        try:
            Path("/proc/self/clear_refs").write_text("5")  # reset the high-water mark to the current RSS
        except OSError:
            pass
        base = _resident()[0] or _resident()[1]
    start = time.perf_counter()
    try:
        xray = load_xray(data)
        result["outcome"] = f"decoded {xray.shape[1]}x{xray.shape[0]}"
        result["warnings"] = list(xray.warnings)
    except CXRError as err:
        result["outcome"] = f"refused: {type(err).__name__}: {err}"
    result["seconds"] = time.perf_counter() - start
    if mode == "trace":
        result["peak"] = tracemalloc.get_traced_memory()[1] - base
    else:
        result["peak"] = max(0, _resident()[1] - base)
    print(json.dumps(result))


def measure(path: Path, mode: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", str(path), "--mode", mode],
                         capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        return {"outcome": f"crashed (exit {out.returncode}): {out.stderr.strip().splitlines()[-1:]}",
                "seconds": float("nan"), "peak": float("nan")}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3500-pixel sides instead of 7000 (about 4x less work)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="rss", help=argparse.SUPPRESS)
    parser.add_argument("--keep", type=Path, help="write the inputs into this folder and keep them")
    args = parser.parse_args()
    if args.child:
        child(args.child, args.mode)
        return 0

    folder = args.keep or Path(tempfile.mkdtemp(prefix="cxr-bench-mem-"))
    folder.mkdir(parents=True, exist_ok=True)
    print("building inputs...", flush=True)
    cases = build_cases(args.quick)
    warm_png, warm_dcm = _png(_banded(256, 256, 3)), _dicom(_banded(256, 256, 3), rows=256, cols=256, samples=3, bits=8)
    warm_rle = _dicom(None, rows=256, cols=256, samples=1, bits=16, rle=_rle_frame(256, 256))
    header = (f"{'case':38} {'file MB':>8} {'8-bit MB':>8} {'traced MB':>9} {'x 8-bit':>7} "
              f"{'RSS MB':>8} {'x 8-bit':>7} {'s':>6}  outcome")
    print(header)
    print("-" * len(header))
    worst = 0.0
    for i, (name, data, (rows, cols)) in enumerate(cases):
        path = folder / f"case{i}.bin"
        path.write_bytes(data)
        path.with_suffix(".warm").write_bytes(warm_rle if "RLE" in name else warm_dcm if "DICOM" in name else warm_png)
        traced, rss = measure(path, "trace"), measure(path, "rss")
        size8 = rows * cols
        t_ratio, r_ratio = traced["peak"] / size8, rss["peak"] / size8
        if traced["outcome"].startswith("decoded"):
            worst = max(worst, t_ratio, r_ratio)
        print(f"{name:38} {len(data) / 1e6:8.1f} {size8 / 1e6:8.1f} {traced['peak'] / 1e6:9.1f} {t_ratio:7.1f} "
              f"{rss['peak'] / 1e6:8.1f} {r_ratio:7.1f} {rss['seconds']:6.2f}  {rss['outcome']}"
              + (f" [{'; '.join(rss.get('warnings', []))}]" if rss.get("warnings") else ""), flush=True)
        if not args.keep:
            path.unlink()
            path.with_suffix(".warm").unlink()
    print(f"\nworst ratio of an accepted film: {worst:.1f}x its decoded 8-bit size (issue 15's bound: about 10x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
