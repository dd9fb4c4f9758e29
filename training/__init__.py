"""Training recipe of the AMIRA demo transducer (needs the `train` extra; never imported by amira)."""
