pub mod ksyms;
