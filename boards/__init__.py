"""mchsm.boards."""
