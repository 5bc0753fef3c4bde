"""Writers of RELION Class2D output, cryoSPARC .cs and PNG galleries."""
