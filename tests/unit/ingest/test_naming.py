import pytest

from brain_tumor.ingest.naming import (
    MAX_SLICE_NUMBER,
    BadName,
    is_ignored,
    is_slice_file,
    parse_slice_path,
    slice_number,
)


def test_parses_real_names():
    n = parse_slice_path("kaggle_3m/TCGA_CS_4941_19960909/TCGA_CS_4941_19960909_12_mask.tif")
    assert (n.patient_id, n.institution, n.acquisition_date, n.slice_index, n.is_mask) == (
        "TCGA_CS_4941_19960909", "CS", "1996-09-09", 12, True)
    assert not parse_slice_path("TCGA_DU_5851_19950428/TCGA_DU_5851_19950428_1.tif").is_mask


@pytest.mark.parametrize("path, needle", [
    ("TCGA_CS_4941_19960909/scan.tif", "is not <PATIENT>_<N>.tif"),
    ("TCGA_CS_4941_19960909/TCGA_CS_4941_19960909_x.tif", "is not"),
    ("OTHER/TCGA_CS_4941_19960909_1.tif", "lies in folder 'OTHER'"),
    ("TCGA_CS_4941_19960909_1.tif", "lies in folder ''"),
    ("TCGA_CS_4941_19960909/TCGA_CS_4941_19960909_1.tif\n", "is not"),
    ("TCGA_CS_4941_19960909/TCGA_CS_4941_19960909_\u0662.tif", "is not"),
    ("TCGA_CS_4941_19960909/TCGA_CS_4941_19960909_100000.tif", "slice number 100000 .* over"),
    ("TCGA_CS_4941_19960909/TCGA_CS_4941_19960909_99999999999999999999999_mask.tif", "over 99999"),
])
def test_bad_names_say_why(path, needle):
    with pytest.raises(BadName, match=needle):
        parse_slice_path(path)


def test_side_files():
    assert is_ignored("kaggle_3m/data.csv") and is_ignored("README.md")
    assert not is_ignored("a/b.tif") and is_slice_file("a/b.TIFF") and not is_slice_file("a.png")


def test_slice_numbers():
    assert [slice_number(d) for d in ("0", "007", "99999", "000000000000000000000012")] == [
        0, 7, MAX_SLICE_NUMBER, 12]
    assert slice_number("100000") is None and slice_number("9" * 5000) is None
