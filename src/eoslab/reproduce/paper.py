"""The experiments of Arora, Li, Panigrahi (2022)."""
