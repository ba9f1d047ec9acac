"""SAM-prior restoration cascade (see issue 3). Nothing here yet."""
