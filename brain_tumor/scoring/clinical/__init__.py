"""Clinical study formats (DICOM series, NIfTI volumes) turned into what the model takes."""
