"""mchsm.sim."""
