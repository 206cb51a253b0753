"""Model files shipped with segflow (package data); see README.md in this folder."""
