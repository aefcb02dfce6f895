"""Running rayseq on Ray clusters: launcher-config checks, job submission."""
