"""Reading and writing the competition's files: PNG images, labels, datasets, atomic files."""
