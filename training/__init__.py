"""Training of the SAM prior and the restoration cascade (see issue 4). Nothing here yet."""
