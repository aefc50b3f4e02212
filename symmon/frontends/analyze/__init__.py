"""Post-hoc analysis: character spectra of internal layers, across training checkpoints."""
