"""The emulated guest's memory activity: dirty logging, realistic images, dirtying vCPUs."""
