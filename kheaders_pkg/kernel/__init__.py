"""Readers of kernel files: notes, ELF, images, modules, config."""
