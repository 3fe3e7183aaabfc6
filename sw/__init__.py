"""mchsm.sw."""
