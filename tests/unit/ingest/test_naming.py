import pytest

from brain_tumor.ingest.naming import BadName, is_ignored, is_slice_file, parse_slice_path


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
])
def test_bad_names_say_why(path, needle):
    with pytest.raises(BadName, match=needle):
        parse_slice_path(path)


def test_side_files():
    assert is_ignored("kaggle_3m/data.csv") and is_ignored("README.md")
    assert not is_ignored("a/b.tif") and is_slice_file("a/b.TIFF") and not is_slice_file("a.png")
