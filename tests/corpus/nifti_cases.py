"""NIfTI cases: a small CT (x, y, z) = (16, 12, 6) written by nibabel, then header fields patched in place.

The valid files must load with the exact voxels, spacing and origin; a header that cannot describe a
volume (vox_offset inside the header, empty or negative dim, zero pixdim and no sform, ...) is refused
naming the file and the field. A gzip bomb (a valid file followed by 256 MB of zeros in the stream,
0.3 MB on disk) must cost the memory its header declares, not what the stream expands to; ctlib refuses
such a file (data after the declared voxels means a wrong dim or datatype).
"""

from __future__ import annotations

import gzip
import io
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np

from corpus.case import Case, Ctx, case, info, loads, refused

SHAPE_XYZ = (16, 12, 6)
VOXEL_MM = (0.8, 0.9, 2.5)
TRANSLATION_RAS = (-6.0, 4.0, 12.5)
AFFINE = np.diag([*VOXEL_MM, 1.0])
AFFINE[:3, 3] = TRANSLATION_RAS
BOMB_ZEROS = 256 * 2**20
BOMB_RSS_MB = 200.0  # a ctlib info child is about 100 MB: the 256 MB of zeros must not be held


def ct_xyz(dtype: str = "int16", seed: int = 0) -> np.ndarray:
    """Stored voxels (x, y, z): HU-like integers in -1000..2000."""
    return np.random.default_rng(seed).integers(-1000, 2001, size=SHAPE_XYZ).astype(dtype)


def nifti_bytes(
    data: np.ndarray, affine: np.ndarray = AFFINE, *, version: int = 1, endian: str = "<", **fields: object
) -> bytes:
    """A single-file NIfTI (uncompressed) with sform = qform = ``affine`` and header ``fields`` set."""
    header_class = nib.Nifti1Header if version == 1 else nib.Nifti2Header
    image_class = nib.Nifti1Image if version == 1 else nib.Nifti2Image
    img = image_class(
        data.astype(data.dtype.newbyteorder(endian)), affine, header=header_class(endianness=endian)
    )
    img.header.set_xyzt_units("mm", "sec")
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    for key, value in fields.items():
        img.header[key] = value
    return img.to_bytes()


def patched(content: bytes, **fields: object) -> bytes:
    """``content`` with header fields overwritten in place (no validation, the file's byte order)."""
    size = 540 if content[:4] in (b"\x1c\x02\x00\x00", b"\x00\x00\x02\x1c") else 348
    header_class = nib.Nifti1Header if size == 348 else nib.Nifti2Header
    header = header_class.from_fileobj(io.BytesIO(content[:size]), check=False)
    for key, value in fields.items():
        header[key] = value
    return header.binaryblock + content[size:]


def expected_hu(data_xyz: np.ndarray, slope: float = 1.0, inter: float = 0.0) -> np.ndarray:
    """The ``Volume`` array (z, y, x) of ``data_xyz``: NIfTI stores x fastest."""
    return data_xyz.transpose(2, 1, 0).astype(np.float32) * np.float32(slope) + np.float32(inter)


def facts(hu: np.ndarray, voxel_mm: tuple = VOXEL_MM) -> dict:
    """``ctlib info`` facts of a file written with ``AFFINE`` (LPS origin: x and y negated)."""
    dx, dy, dz = voxel_mm
    tx, ty, tz = TRANSLATION_RAS
    return {
        "format": "nifti",
        "shape": list(hu.shape),
        "spacing_mm": [dz, dy, dx],
        "origin_lps_mm": [-tx, -ty, tz],
        "hu_min": float(hu.min()),
        "hu_max": float(hu.max()),
    }


def write(c: Ctx, file: str, content: bytes, *, gz: bool = False) -> Path:
    """Write ``content`` (gzipped for ``gz``) to the case folder."""
    path = c.dir / file
    path.write_bytes(gzip.compress(content, mtime=0) if gz else content)
    return path


def loads_exactly(
    c: Ctx, path: Path, hu: np.ndarray, note: str, voxel_mm: tuple = VOXEL_MM, **kw: object
) -> Case:
    """``ctlib info`` loads ``path`` with the facts and voxels of ``hu``."""
    return loads(
        info(c.rel(path)),
        facts(hu, voxel_mm),
        note,
        array=c.expect_array(hu),
        array_read=[c.rel(path), None],
        **kw,
    )


def refused_file(c: Ctx, path: Path, keywords: list[str], note: str, **kw: object) -> Case:
    """``ctlib info`` refuses ``path``, naming it."""
    return refused(info(c.rel(path)), [path.name], keywords, note, **kw)


# --- loads -----------------------------------------------------------------------------------------------


@case("nifti")
def case_valid_int16_gz(c: Ctx) -> Case:
    data = ct_xyz()
    path = write(c, "ct.nii.gz", nifti_bytes(data), gz=True)
    return loads_exactly(c, path, expected_hu(data), "a clean int16 .nii.gz")


@case("nifti")
def case_valid_float32(c: Ctx) -> Case:
    data = ct_xyz("float32") + np.float32(0.25)
    path = write(c, "ct.nii", nifti_bytes(data))
    return loads_exactly(c, path, expected_hu(data), "a clean float32 .nii with fractional HU")


@case("nifti")
def case_big_endian(c: Ctx) -> Case:
    data = ct_xyz()
    path = write(c, "ct_be.nii", nifti_bytes(data, endian=">"))
    return loads_exactly(c, path, expected_hu(data), "a valid big-endian NIfTI-1")


@case("nifti")
def case_nifti2(c: Ctx) -> Case:
    data = ct_xyz()
    path = write(c, "ct2.nii", nifti_bytes(data, version=2))
    return loads_exactly(c, path, expected_hu(data), "a valid NIfTI-2 file")


@case("nifti")
def case_nifti2_gz_big_endian(c: Ctx) -> Case:
    data = ct_xyz()
    path = write(c, "ct2_be.nii.gz", nifti_bytes(data, version=2, endian=">"), gz=True)
    return loads_exactly(c, path, expected_hu(data), "a valid big-endian NIfTI-2 .nii.gz")


@case("nifti")
def case_scaled(c: Ctx) -> Case:
    data = ct_xyz() + 1000
    path = write(c, "scaled.nii", nifti_bytes(data, scl_slope=0.5, scl_inter=-500.0))
    return loads_exactly(c, path, expected_hu(data, 0.5, -500.0), "scl_slope 0.5, scl_inter -500 applied")


@case("nifti")
def case_padding_below_air(c: Ctx) -> Case:
    data = ct_xyz()
    data[:3] = -2048
    hu = np.maximum(expected_hu(data), -1024)
    path = write(c, "padded.nii.gz", nifti_bytes(data), gz=True)
    return loads_exactly(c, path, hu, "-2048 scanner padding read as air (-1024)")


@case("nifti")
def case_4d_one_frame(c: Ctx) -> Case:
    data = ct_xyz()
    path = write(c, "one_frame.nii", nifti_bytes(data[..., None]))
    return loads_exactly(c, path, expected_hu(data), "4-D with one frame (x, y, z, 1)")


@case("nifti")
def case_zero_pixdim_with_sform(c: Ctx) -> Case:
    data = ct_xyz()
    content = patched(nifti_bytes(data), pixdim=[1, 0, 0, 0, 1, 0, 0, 0], qform_code=0)
    path = write(c, "sform_only.nii", content)
    return loads_exactly(c, path, expected_hu(data), "pixdim 0 but an sform: spacing from the sform")


# --- refused ---------------------------------------------------------------------------------------------


@case("nifti")
def case_gzip_bomb(c: Ctx) -> Case:
    data = ct_xyz()
    stream = zlib.compressobj(9, zlib.DEFLATED, 31)  # one gzip member
    parts = [stream.compress(nifti_bytes(data))]
    zeros = bytes(16 * 2**20)
    parts += [stream.compress(zeros) for _ in range(BOMB_ZEROS // len(zeros))]
    parts.append(stream.flush())
    path = c.dir / "bomb.nii.gz"
    path.write_bytes(b"".join(parts))
    # ctlib reads no further than the voxels the header declares, and refuses a file that goes on
    return refused_file(
        c,
        path,
        ["after the", "trailing", "beyond"],
        f"valid header and voxels, then {BOMB_ZEROS >> 20} MB of zeros in the gzip stream "
        f"({path.stat().st_size >> 10} KB on disk): bounded memory",
        max_rss_mb=BOMB_RSS_MB,
    )


@case("nifti")
def case_trailing_bytes(c: Ctx) -> Case:
    path = write(c, "trailing.nii", nifti_bytes(ct_xyz()) + bytes(4096))
    return refused_file(c, path, ["after the", "trailing", "beyond"], "4 KB after the declared voxels")


@case("nifti")
def case_vox_offset_zero(c: Ctx) -> Case:
    path = write(c, "vox0.nii", patched(nifti_bytes(ct_xyz()), vox_offset=0))
    return refused_file(c, path, ["vox_offset"], "vox_offset 0: the header would be read as voxels")


@case("nifti")
def case_vox_offset_inside_header(c: Ctx) -> Case:
    path = write(c, "vox100.nii.gz", patched(nifti_bytes(ct_xyz()), vox_offset=100), gz=True)
    return refused_file(c, path, ["vox_offset"], "vox_offset 100, inside the 348-byte header")


@case("nifti")
def case_negative_dim(c: Ctx) -> Case:
    path = write(c, "negdim.nii", patched(nifti_bytes(ct_xyz()), dim=[3, 16, -12, 6, 1, 1, 1, 1]))
    return refused_file(c, path, ["dim"], "dim[2] = -12")


@case("nifti")
def case_dim0_zero(c: Ctx) -> Case:
    path = write(c, "dim0.nii", patched(nifti_bytes(ct_xyz()), dim=[0, 16, 12, 6, 1, 1, 1, 1]))
    return refused_file(c, path, ["dim"], "dim[0] = 0: no dimensions")


@case("nifti")
def case_dim_extent_zero(c: Ctx) -> Case:
    path = write(c, "empty_z.nii", patched(nifti_bytes(ct_xyz()), dim=[3, 16, 12, 0, 1, 1, 1, 1]))
    return refused_file(c, path, ["dim"], "dim[3] = 0: an empty volume")


@case("nifti")
def case_4d_two_frames(c: Ctx) -> Case:
    path = write(c, "two_frames.nii.gz", nifti_bytes(np.stack([ct_xyz(), ct_xyz(seed=1)], axis=-1)), gz=True)
    return refused_file(c, path, ["3-D", "4-D", "frames"], "4-D with two frames: not one CT volume")


@case("nifti")
def case_zero_pixdim_no_sform(c: Ctx) -> Case:
    content = patched(nifti_bytes(ct_xyz()), pixdim=[1, 0, 0, 0, 1, 0, 0, 0], qform_code=0, sform_code=0)
    path = write(c, "pixdim0.nii", content)
    return refused_file(c, path, ["pixdim"], "pixdim 0 with neither sform nor qform: spacing unknown")


@case("nifti")
def case_nan_pixdim_no_sform(c: Ctx) -> Case:
    content = patched(
        nifti_bytes(ct_xyz()), pixdim=[1, np.nan, 0.9, 2.5, 1, 0, 0, 0], qform_code=0, sform_code=0
    )
    path = write(c, "pixdim_nan.nii", content)
    return refused_file(c, path, ["pixdim"], "pixdim NaN with neither sform nor qform")


@case("nifti")
def case_singular_sform(c: Ctx) -> Case:
    content = patched(
        nifti_bytes(ct_xyz()), srow_x=[0, 0, 0, 0], srow_y=[0, 0, 0, 0], srow_z=[0, 0, 0, 0], qform_code=0
    )
    path = write(c, "sform0.nii", content)
    return refused_file(c, path, ["affine", "sform"], "sform_code 1 with an all-zero sform")


@case("nifti")
def case_nan_voxels(c: Ctx) -> Case:
    data = ct_xyz("float32")
    data[3, 4, 2] = np.nan
    path = write(c, "nan.nii.gz", nifti_bytes(data), gz=True)
    return refused_file(c, path, ["NaN"], "one NaN voxel in a float32 CT")


@case("nifti")
def case_inf_voxels(c: Ctx) -> Case:
    data = ct_xyz("float32")
    data[0, 0, 0] = np.inf
    path = write(c, "inf.nii", nifti_bytes(data))
    return refused_file(c, path, ["infinite", "inf", "NaN"], "one +inf voxel")


@case("nifti")
def case_truncated_gz(c: Ctx) -> Case:
    content = gzip.compress(nifti_bytes(ct_xyz()), mtime=0)
    path = write(c, "cut.nii.gz", content[: len(content) // 2])
    return refused_file(c, path, ["truncated", "ends early", "gzip"], "a .nii.gz cut in half")


@case("nifti")
def case_truncated_voxels(c: Ctx) -> Case:
    content = nifti_bytes(ct_xyz())
    path = write(c, "cut.nii", content[:-1000])
    return refused_file(c, path, ["truncated"], "a .nii missing its last 1000 voxel bytes")


@case("nifti")
def case_header_only(c: Ctx) -> Case:
    path = write(c, "header_only.nii", nifti_bytes(ct_xyz())[:352])
    return refused_file(c, path, ["truncated", "voxel"], "header and extension flag, no voxels")


@case("nifti")
def case_short_header(c: Ctx) -> Case:
    path = write(c, "short.nii", nifti_bytes(ct_xyz())[:100])
    return refused_file(c, path, ["header"], "100 bytes of a 348-byte header")


@case("nifti")
def case_empty_file(c: Ctx) -> Case:
    path = write(c, "empty.nii", b"")
    return refused_file(c, path, ["empty", "header", "0 bytes"], "a zero-byte .nii")


@case("nifti")
def case_garbage(c: Ctx) -> Case:
    path = write(c, "garbage.nii", np.random.default_rng(3).bytes(4096))
    return refused_file(c, path, ["header", "NIfTI"], "4 KB of random bytes named .nii")


@case("nifti")
def case_garbage_gz(c: Ctx) -> Case:
    path = write(c, "garbage.nii.gz", np.random.default_rng(4).bytes(4096))
    return refused_file(c, path, ["gzip", "header"], "4 KB of random bytes named .nii.gz")


@case("nifti")
def case_gz_not_gzipped(c: Ctx) -> Case:
    path = write(c, "plain.nii.gz", nifti_bytes(ct_xyz()))
    return refused_file(c, path, ["gzip"], "an uncompressed NIfTI named .nii.gz")


@case("nifti")
def case_nii_is_gzipped(c: Ctx) -> Case:
    path = write(c, "packed.nii", nifti_bytes(ct_xyz()), gz=True)
    return refused_file(c, path, ["gzip", "header"], "a gzipped NIfTI named .nii")


@case("nifti")
def case_wrong_extension(c: Ctx) -> Case:
    path = write(c, "ct.nifti", nifti_bytes(ct_xyz()))
    return refused_file(c, path, ["format"], "a valid NIfTI named .nifti")


@case("nifti")
def case_bad_datatype(c: Ctx) -> Case:
    path = write(c, "dtype9999.nii", patched(nifti_bytes(ct_xyz()), datatype=9999))
    return refused_file(c, path, ["datatype", "data type"], "datatype code 9999")


@case("nifti")
def case_rgb_datatype(c: Ctx) -> Case:
    path = write(c, "rgb.nii", patched(nifti_bytes(ct_xyz()), datatype=128, bitpix=24))
    return refused_file(c, path, ["datatype", "data type"], "datatype RGB24: not a scalar CT")


@case("nifti")
def case_bad_magic(c: Ctx) -> Case:
    path = write(c, "magic.nii", patched(nifti_bytes(ct_xyz()), magic=b"xyz"))
    return refused_file(c, path, ["magic", "header"], "magic 'xyz' instead of 'n+1'")


@case("nifti")
def case_pair_magic_in_single_file(c: Ctx) -> Case:
    path = write(c, "pair.nii", patched(nifti_bytes(ct_xyz()), magic=b"ni1", vox_offset=0))
    return refused_file(
        c,
        path,
        ["magic", "ni1", ".img", "pair", "vox_offset"],
        "magic 'ni1' (header of a .hdr/.img pair) in a .nii: the header would be read as voxels",
    )


@case("nifti")
def case_huge_dim_claim(c: Ctx) -> Case:
    path = write(c, "huge.nii", patched(nifti_bytes(ct_xyz()), dim=[3, 32767, 32767, 32767, 1, 1, 1, 1]))
    return refused_file(c, path, ["GiB", "dim", "truncated"], "dim 32767^3 int16 (64 TiB) in a 5 KB file")


@case("nifti")
def case_gzip_claim_beyond_stream(c: Ctx) -> Case:
    content = patched(nifti_bytes(ct_xyz()), dim=[3, 2048, 2048, 1024, 1, 1, 1, 1])
    stream = zlib.compressobj(9, zlib.DEFLATED, 31)
    zeros = bytes(16 * 2**20)
    parts = [stream.compress(content)] + [stream.compress(zeros) for _ in range(4)] + [stream.flush()]
    path = c.dir / "claim.nii.gz"
    path.write_bytes(b"".join(parts))
    return refused_file(
        c,
        path,
        ["truncated", "declares", "more than"],
        "header claims 8 GiB, the stream holds 64 MB of zeros",
    )
