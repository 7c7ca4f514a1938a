"""Env factories, seeding and wrappers for Gymnasium, PettingZoo and MettaGrid."""
