"""mchsm.rtl."""
