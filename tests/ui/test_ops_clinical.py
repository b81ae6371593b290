"""Clinical outputs (DICOM SEG, NIfTI mask) on the ops pages: links where a study has them."""

from __future__ import annotations

from brain_tumor_airflow.ui.pages import scoring_page, study_page


def _study(sid: str, **fields: object) -> dict:
    return {"study_id": sid, "model_version": "m-1", "at": "2026-03-01T10:00:00+00:00",
            "dicom_seg": None, "nifti_mask": None, **fields}


def test_scoring_page_links_the_seg_of_each_dicom_study() -> None:
    studies = [_study("dcm-1", dicom_seg="seg.dcm"), _study("nii-1", nifti_mask="mask.nii.gz"),
               _study("tif-1")]
    html = scoring_page("/b", [], studies, [], [])
    table = html[html.index('id="studies"'):]
    assert "DICOM SEG / NIfTI mask</th>" in table
    assert 'href="/b/files/scores/m-1/dcm-1/clinical/dicom_seg">DICOM SEG</a>' in table
    assert 'href="/b/files/scores/m-1/nii-1/clinical/nifti_mask">NIfTI mask</a>' in table
    tiff_row = table[table.index(">tif-1<"):].split("</tr>", 1)[0]
    assert "clinical/" not in tiff_row and "<td>—</td>" in tiff_row


def test_study_page_links_its_clinical_outputs_and_says_where_they_went() -> None:
    summary = {"study_id": "dcm-1", "model_version": "m-1", "tumor_slices": 3,
               "dicom_seg": "seg.dcm", "pacs_sent": "seg.dcm"}
    html = study_page("/b", "m-1", {"summary": summary, "overlays": []}, [])
    clinical = html[html.index('id="clinical"'):].split("</p>", 1)[0]
    assert 'href="/b/files/scores/m-1/dcm-1/clinical/dicom_seg"' in clinical
    assert "sent to the PACS" in clinical
    plain = study_page("/b", "m-1", {"summary": {**summary, "dicom_seg": None,
                                                 "pacs_sent": None}, "overlays": []}, [])
    assert 'id="clinical"' not in plain and "/clinical/" not in plain
