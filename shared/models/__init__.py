"""Model directories in the released FunASR layout: registry, random weights, verification."""
