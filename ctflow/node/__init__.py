"""A DICOM network node: send series to a PACS (C-STORE) and serve as a C-STORE SCP that reconstructs what it receives."""
