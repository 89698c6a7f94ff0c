"""Reading X-ray files, datasets and label schemes, patient-grouped splits, transforms and the dataset audit."""
