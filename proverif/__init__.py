"""mchsm.proverif."""
